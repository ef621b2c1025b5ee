/* data.c - llm.c token shards: a header of 256 little-endian int32 (magic
 * 20240520, version 1, token count) then uint16 tokens; version 2 (fw's, for
 * vocabularies over 65536) has uint32 tokens, as has llm.c's Llama-3 format
 * (magic 20240801, version 7), also read. Micro-batch k of a
 * shard is the B*T+1 tokens at offset k*B*T: inputs are the first B*T,
 * targets the same shifted by one. Shards follow each other in the order
 * given; with shuffling, the micro-batches of an epoch are permuted by a
 * seeded counter-based RNG, so a position (epoch, cursor) is all a checkpoint
 * needs to resume the exact order. The same loader serves an in-memory token
 * stream (plain text) and SFT rows (dataset.c), where the rows themselves
 * are shuffled and the last micro-batch of an epoch is filled up with empty
 * rows (all padding, outside the loss). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fw/graph.h"
#include "fw/runtime/data.h"
#include "fw/runtime/tasks.h"

#define SHARD_MAGIC 20240520
#define SHARD_MAGIC_LLAMA3 20240801
#define SHARD_HEADER_BYTES 1024

static enum fw_status shard_open(struct fw_rt_shard *s, const char *path, int64_t need,
				 struct fw_err *err)
{
	int32_t hdr[256];
	struct stat st;
	memset(s, 0, sizeof(*s));
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return fw_errorf(err, FW_ERR_IO, "%s: %s", path, strerror(errno));
	if (fstat(fd, &st) != 0 || read(fd, hdr, sizeof(hdr)) != (ssize_t)sizeof(hdr)) {
		close(fd);
		return fw_errorf(err, FW_ERR_FORMAT, "%s: shorter than a token-shard header", path);
	}
	int width = hdr[0] == SHARD_MAGIC && hdr[1] == 1 ? 2 :
		    (hdr[0] == SHARD_MAGIC && hdr[1] == 2) ||
		    (hdr[0] == SHARD_MAGIC_LLAMA3 && hdr[1] == 7) ? 4 : 0;
	if (!width) {
		close(fd);
		return fw_errorf(err, FW_ERR_FORMAT,
				 "%s: not an llm.c token shard (magic %d version %d, expected %d "
				 "version 1 or 2)", path, hdr[0], hdr[1], SHARD_MAGIC);
	}
	int64_t n = hdr[2];
	if (n < 0 || st.st_size != SHARD_HEADER_BYTES + width * n) {
		close(fd);
		return fw_errorf(err, FW_ERR_FORMAT,
				 "%s: header says %lld tokens but the file holds %lld bytes of tokens",
				 path, (long long)n, (long long)(st.st_size - SHARD_HEADER_BYTES) / width);
	}
	if (n < need) {
		close(fd);
		return fw_errorf(err, FW_ERR_FORMAT,
				 "%s: %lld tokens, fewer than one micro-batch needs (%lld)", path,
				 (long long)n, (long long)need);
	}
	s->map_len = (size_t)st.st_size;
	s->map = mmap(NULL, s->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (s->map == MAP_FAILED) {
		s->map = NULL;
		return fw_errorf(err, FW_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
	}
	if (width == 2)
		s->tokens = (uint16_t *)((char *)s->map + SHARD_HEADER_BYTES);
	else
		s->tokens32 = (uint32_t *)((char *)s->map + SHARD_HEADER_BYTES);
	s->n_tokens = n;
	s->path = strdup(path);
	if (hdr[3] == FW_SHARD_TOK_MARK && hdr[4] > 0) {
		s->tok_vocab = hdr[4];
		s->tok_fingerprint = (uint64_t)(uint32_t)hdr[5] | (uint64_t)(uint32_t)hdr[6] << 32;
	}
	return FW_OK;
}

static void shuffle_epoch(struct fw_rt_loader *l)
{
	int64_t n = l->rows.n ? l->rows.n : l->n_micro;
	for (int64_t i = 0; i < n; i++)
		l->order[i] = i;
	if (!l->shuffle)
		return;
	uint64_t key = fw_hash_str("data-order", l->seed) ^ (uint64_t)l->epoch * 0x9E3779B97F4A7C15ull;
	for (int64_t i = n - 1; i > 0; i--) {
		int64_t j = (int64_t)(fw_rng_uniform(key, (uint64_t)i) * (double)(i + 1));
		int64_t t = l->order[i];
		l->order[i] = l->order[j];
		l->order[j] = t;
	}
}

enum fw_status fw_rt_loader_open(struct fw_rt_loader *l, const char *paths, int64_t B, int64_t T,
			   bool shuffle, uint64_t seed, struct fw_err *err)
{
	memset(l, 0, sizeof(*l));
	l->B = B;
	l->T = T;
	l->shuffle = shuffle;
	l->seed = seed;
	char *copy = strdup(paths), *save = NULL;
	if (!copy)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	for (char *p = strtok_r(copy, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
		struct fw_rt_shard *ns = realloc(l->shards, sizeof(*ns) * (size_t)(l->n_shards + 1));
		if (!ns) {
			free(copy);
			return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
		}
		l->shards = ns;
		enum fw_status s = shard_open(&l->shards[l->n_shards++], p, B * T + 1, err);
		if (s != FW_OK) {
			free(copy);
			return s;
		}
		l->n_micro += (l->shards[l->n_shards - 1].n_tokens - 1) / (B * T);
	}
	free(copy);
	if (l->n_shards == 0)
		return fw_errorf(err, FW_ERR_INVALID, "no data files given");
	l->order = malloc(sizeof(int64_t) * (size_t)l->n_micro);
	if (!l->order)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	shuffle_epoch(l);
	return FW_OK;
}

enum fw_status fw_rt_loader_from_rows(struct fw_rt_loader *l, struct fw_rt_rows *rows, int64_t B, bool shuffle,
				uint64_t seed, struct fw_err *err)
{
	memset(l, 0, sizeof(*l));
	l->rows = *rows;
	memset(rows, 0, sizeof(*rows));
	l->B = B;
	l->T = l->rows.T;
	l->shuffle = shuffle;
	l->seed = seed;
	l->n_micro = (l->rows.n + B - 1) / B;
	l->order = malloc(sizeof(int64_t) * (size_t)(l->rows.n > 0 ? l->rows.n : 1));
	if (!l->order)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	shuffle_epoch(l);
	return FW_OK;
}

enum fw_status fw_rt_loader_from_stream(struct fw_rt_loader *l, const char *name, uint32_t *tokens32,
				  int64_t n, int64_t B, int64_t T, bool shuffle, uint64_t seed,
				  struct fw_err *err)
{
	memset(l, 0, sizeof(*l));
	l->B = B;
	l->T = T;
	l->shuffle = shuffle;
	l->seed = seed;
	l->shards = calloc(1, sizeof(*l->shards));
	if (!l->shards) {
		free(tokens32);
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	}
	l->n_shards = 1;
	l->shards[0] = (struct fw_rt_shard){ .path = strdup(name), .n_tokens = n, .tokens32 = tokens32 };
	if (n < B * T + 1)
		return fw_errorf(err, FW_ERR_FORMAT,
				 "%s: %lld tokens, fewer than one micro-batch needs (%lld)", name,
				 (long long)n, (long long)(B * T + 1));
	l->n_micro = (n - 1) / (B * T);
	l->order = malloc(sizeof(int64_t) * (size_t)l->n_micro);
	if (!l->order)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	shuffle_epoch(l);
	return FW_OK;
}

void fw_rt_loader_close(struct fw_rt_loader *l)
{
	for (int i = 0; i < l->n_shards; i++) {
		if (l->shards[i].map)
			munmap(l->shards[i].map, l->shards[i].map_len);
		else
			free(l->shards[i].tokens32);       /* an in-memory stream */
		free(l->shards[i].path);
	}
	free(l->rows.tokens);
	free(l->rows.targets);
	free(l->rows.seg);
	free(l->shards);
	free(l->order);
	memset(l, 0, sizeof(*l));
}

void fw_rt_loader_seek(struct fw_rt_loader *l, int64_t epoch, int64_t cursor)
{
	l->epoch = epoch;
	l->cursor = cursor;
	shuffle_epoch(l);
}

int64_t fw_rt_loader_left(const struct fw_rt_loader *l)
{
	return l->n_micro - l->cursor;
}

static void rows_next(struct fw_rt_loader *l, int32_t *tokens, int32_t *targets, int32_t *seg)
{
	int64_t T = l->T, first = l->cursor++ * l->B;
	int64_t To = l->out_T > 0 ? l->out_T : T, Ts = l->seg_T > 0 ? l->seg_T : T;
	for (int64_t b = 0; b < l->B; b++) {
		int64_t k = first + b;
		if (k >= l->rows.n) {                   /* filler row: all padding */
			for (int64_t i = 0; i < To; i++) {
				tokens[b * To + i] = 0;
				targets[b * To + i] = -1;
			}
			for (int64_t i = 0; seg && i < Ts; i++)
				seg[b * Ts + i] = 0;
			continue;
		}
		int64_t r = l->order[k] * T;
		memcpy(tokens + b * To, l->rows.tokens + r, sizeof(int32_t) * (size_t)To);
		memcpy(targets + b * To, l->rows.targets + r, sizeof(int32_t) * (size_t)To);
		if (seg)
			memcpy(seg + b * Ts, l->rows.seg + r, sizeof(int32_t) * (size_t)Ts);
	}
}

void fw_rt_loader_next(struct fw_rt_loader *l, int32_t *tokens, int32_t *targets, int32_t *seg)
{
	if (l->cursor >= l->n_micro)
		fw_rt_loader_seek(l, l->epoch + 1, 0);
	if (l->rows.n) {
		uint64_t index = (uint64_t)(l->epoch * l->n_micro + l->cursor);
		rows_next(l, tokens, targets, seg);
		if (l->mlm)
			fw_rt_mlm_mask(l->mlm, index, tokens, targets, seg, l->B * l->T);
		if (l->span)
			fw_rt_span_corrupt(l->span, index, tokens, targets, seg, l->B, l->T);
		return;
	}
	int64_t m = l->order[l->cursor++], BT = l->B * l->T;
	for (int64_t i = 0; seg && i < BT; i++)
		seg[i] = 1;                     /* one sequence a row */
	int si = 0;
	while (m >= (l->shards[si].n_tokens - 1) / BT) {
		m -= (l->shards[si].n_tokens - 1) / BT;
		si++;
	}
	const struct fw_rt_shard *sh = &l->shards[si];
	if (sh->tokens) {
		const uint16_t *src = sh->tokens + m * BT;
		for (int64_t i = 0; i < BT; i++) {
			tokens[i] = src[i];
			targets[i] = src[i + 1];
		}
	} else {
		const uint32_t *src = sh->tokens32 + m * BT;
		for (int64_t i = 0; i < BT; i++) {
			tokens[i] = (int32_t)src[i];
			targets[i] = (int32_t)src[i + 1];
		}
	}
}

/* --- the tokenizer of a token shard ---------------------------------------------------------- */

uint64_t fw_rt_tokenizer_fingerprint(const struct fw_tokenizer *t, int32_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (int32_t id = 0; id < n; id++) {
		size_t len = 0;
		const char *b = fw_tokenizer_token(t, id, &len);
		uint32_t l32 = b ? (uint32_t)len : 0xffffffffu;
		for (int k = 0; k < 4; k++)
			h = (h ^ ((l32 >> (8 * k)) & 0xff)) * 0x100000001b3ull;
		for (size_t k = 0; b && k < len; k++)
			h = (h ^ (unsigned char)b[k]) * 0x100000001b3ull;
	}
	return h;
}
