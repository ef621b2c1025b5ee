/* seq2seq.c - encoder-decoder rows: T5's span corruption and the model's
 * encoder inputs (fw/runtime/tasks.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fw/runtime/tasks.h"

static uint64_t mix(uint64_t x)        /* splitmix64's finaliser */
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Corrupted input and target lengths of n text tokens, as HF computes them
 * (np.round: half to even, which rint is). */
static void span_lengths(int64_t n, double density, double mean, int64_t *in, int64_t *out)
{
	int64_t noise = (int64_t)rint((double)n * density);
	int64_t spans = (int64_t)rint((double)noise / mean);
	*in = n - noise + spans + 1;
	*out = noise + spans + 1;
}

int64_t fw_rt_span_raw_length(int64_t T, double noise_density, double mean_span)
{
	int64_t n = T, in, out;
	for (span_lengths(n + 1, noise_density, mean_span, &in, &out); in <= T;
	     span_lengths(n + 1, noise_density, mean_span, &in, &out))
		n++;
	for (span_lengths(n, noise_density, mean_span, &in, &out); n > 1 && (in > T || out > T);
	     span_lengths(n, noise_density, mean_span, &in, &out))
		n--;
	return n > 1 && in <= T && out <= T ? n : 0;
}

/* _random_segmentation: num_items split into num_segments non-empty runs,
 * their lengths into len. The cuts are the first num_segments - 1 of the
 * num_items - 1 gaps after a Fisher-Yates shuffle (from the top: slot i
 * swaps with mix(key ^ i) % (i + 1)). */
static void segmentation(int64_t num_items, int64_t num_segments, uint64_t key, uint8_t *cut,
			 int64_t *len)
{
	int64_t gaps = num_items - 1;
	for (int64_t i = 0; i < gaps; i++)
		cut[i] = i < num_segments - 1;
	for (int64_t i = gaps - 1; i > 0; i--) {
		int64_t j = (int64_t)(mix(key ^ (uint64_t)i) % (uint64_t)(i + 1));
		uint8_t t = cut[i];
		cut[i] = cut[j];
		cut[j] = t;
	}
	int64_t seg = 0;
	len[0] = 1;
	for (int64_t i = 0; i < gaps; i++) {
		if (cut[i])
			len[++seg] = 0;
		len[seg]++;
	}
}

bool fw_rt_span_noise_mask(int64_t n, double noise_density, double mean_span, uint64_t key,
			   uint8_t *noise)
{
	int64_t num_noise = (int64_t)rint((double)n * noise_density);
	num_noise = num_noise < 1 ? 1 : num_noise > n - 1 ? n - 1 : num_noise;
	int64_t spans = (int64_t)rint((double)num_noise / mean_span);
	spans = spans < 1 ? 1 : spans;
	int64_t num_keep = n - num_noise;
	if (spans > num_keep)   /* rows too short for HF's formula (it would fail) */
		spans = num_keep;
	uint8_t *cut = malloc((size_t)n + 1);
	int64_t *noise_len = malloc(sizeof(int64_t) * (size_t)(spans + 1));
	int64_t *keep_len = malloc(sizeof(int64_t) * (size_t)(spans + 1));
	bool ok = cut && noise_len && keep_len;
	memset(noise, 0, (size_t)n);
	if (ok) {
		segmentation(num_noise, spans, mix(key ^ 1), cut, noise_len);
		segmentation(num_keep, spans, mix(key ^ 2), cut, keep_len);
		int64_t at = 0;     /* kept run, noise run, kept run, ..., ending in noise */
		for (int64_t k = 0; k < spans; k++) {
			at += keep_len[k];
			for (int64_t i = 0; i < noise_len[k]; i++)
				noise[at++] = 1;
		}
	}
	free(cut);
	free(noise_len);
	free(keep_len);
	return ok;
}

/* HF's filter_input_ids: raw with each run of replaced positions (noise,
 * or with replace_noise false the kept tokens) turned into the next
 * sentinel, then </s>; returns the length. */
static int64_t filter(const struct fw_rt_seq2seq *c, const int32_t *raw, const uint8_t *noise,
		      int64_t n, bool replace_noise, int32_t *out)
{
	int64_t m = 0;
	int32_t sentinel = c->sentinel_top - 1;
	for (int64_t i = 0; i < n; i++) {
		bool replaced = (noise[i] != 0) == replace_noise;
		if (!replaced)
			out[m++] = raw[i];
		else if (i == 0 || ((noise[i - 1] != 0) == replace_noise) == false)
			out[m++] = sentinel--;
	}
	out[m++] = c->eos;
	return m;
}

void fw_rt_span_corrupt(const struct fw_rt_seq2seq *c, uint64_t index, int32_t *tokens,
			int32_t *targets, int32_t *seg, int64_t B, int64_t T)
{
	int64_t n = c->raw_len;
	uint8_t *noise = malloc((size_t)n);
	int32_t *raw = malloc(sizeof(int32_t) * (size_t)n), *buf = malloc(sizeof(int32_t) * (size_t)(n + 1));
	uint64_t base = mix(mix(c->seed) ^ index);
	bool ok = noise && raw && buf;   /* else every row becomes padding: no loss */
	for (int64_t b = 0; seg && b < B; b++) {
		int32_t *tk = tokens + b * T, *tg = targets + b * T, *sg = seg + b * T;
		bool fill = sg[0] == 0;       /* the loader's padding rows */
		for (int64_t i = 0; ok && i < n; i++)   /* raw_len may exceed T */
			raw[i] = i < T ? tk[i] : tg[i - T];
		for (int64_t i = 0; i < T; i++) {
			tk[i] = c->pad;
			tg[i] = -1;
			sg[i] = 0;
		}
		if (fill || !ok || !fw_rt_span_noise_mask(n, c->noise_density, c->mean_span,
							   mix(base ^ (uint64_t)b), noise))
			continue;
		int64_t m = filter(c, raw, noise, n, true, buf);      /* the encoder's input */
		for (int64_t i = 0; i < m && i < T; i++)
			sg[i] = buf[i] + 1;
		m = filter(c, raw, noise, n, false, buf);              /* the target */
		for (int64_t i = 0; i < m && i < T; i++) {
			tg[i] = buf[i];
			tk[i] = i ? buf[i - 1] : c->start;
		}
	}
	free(noise);
	free(raw);
	free(buf);
}

void fw_rt_seq2seq_fill(struct fw_model *m, const int32_t *seg)
{
	struct fw_tensor *bias = fw_ctx_find(m->ctx, "enc_bias");
	int32_t *enc = m->enc_tokens->data;
	float *eb = bias ? bias->data : NULL;
	for (int64_t i = 0; i < fw_nelem(m->enc_tokens); i++) {      /* (B, Te) */
		enc[i] = seg[i] > 0 ? seg[i] - 1 : 0;
		if (eb)
			eb[i] = seg[i] > 0 ? 0.0f : -INFINITY;
	}
}
