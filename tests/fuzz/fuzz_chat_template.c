/* fuzz_chat_template.c - libFuzzer target: the input compiled as a Jinja
 * chat template (fw_chat_template_compile) and, when it parses, rendered
 * with a small conversation both ways. Built only with -DFW_FUZZ=ON
 * (clang); see tests/fuzz/README.md. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fw/chat_template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	struct fw_err err = { 0 };
	struct fw_chat_template *t = fw_chat_template_compile(text, &err);
	free(text);
	if (!t)
		return 0;
	static const char msgs[] = "[{\"role\": \"system\", \"content\": \"be brief\"}, "
		"{\"role\": \"user\", \"content\": \"hi {{ x }}\"}, "
		"{\"role\": \"assistant\", \"content\": \"hello\", \"tool_calls\": [{\"function\": "
		"{\"name\": \"f\", \"arguments\": {\"a\": [1, 2.5, null, true]}}}]}]";
	for (int gen = 0; gen < 2; gen++) {
		char *s = fw_chat_template_render_json(t, msgs, gen,
						       "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}",
						       &err);
		fw_free(s);
	}
	fw_chat_template_free(t);
	return 0;
}
