/* fuzz_tokenizer_json.c - libFuzzer target: a tokenizer.json loaded from the
 * input (fw_tokenizer_load_hf_json), then, when it loads, a few strings
 * encoded and decoded. Built only with -DFW_FUZZ=ON (clang); see
 * tests/fuzz/README.md. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fw/tokenizer.h"

static char path[64];

static void remove_file(void)
{
	unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!*path) {
		snprintf(path, sizeof(path), "/dev/shm/fw-fuzz-tok.%d.json", (int)getpid());
		atexit(remove_file);
	}
	FILE *f = fopen(path, "wb");
	if (!f)
		abort();
	fwrite(data, 1, size, f);
	fclose(f);
	struct fw_err err = { 0 };
	struct fw_tokenizer *t = fw_tokenizer_load_hf_json(path, &err);
	if (!t)
		return 0;
	static const char *const texts[] = { "Hello world", " a  b\n\tc", "naïve 日本 🙂",
		"<s>x</s>[CLS]<unk>", "" };
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		struct fw_token_buf ids = { 0 };
		for (int special = 0; special < 2; special++) {
			ids.n = 0;
			if (fw_tokenizer_encode(t, texts[i], strlen(texts[i]), special, &ids, &err) ==
			    FW_OK) {
				char *back = NULL;
				size_t n;
				if (fw_tokenizer_decode(t, ids.ids, ids.n, &back, &n, &err) == FW_OK)
					fw_free(back);
			}
		}
		fw_token_buf_free(&ids);
	}
	char *s = fw_tokenizer_serialize(t, &err);
	fw_free(s);
	fw_tokenizer_free(t);
	return 0;
}
