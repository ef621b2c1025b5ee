/* test_rt_tasks.c - encoder tasks (fw/runtime/tasks.h): BERT's dynamic
 * masking against its published proportions (15% chosen; of those 80%
 * [MASK], 10% random, 10% kept) within binomial error, determinism per
 * (seed, micro-batch index) and through a loader resumed by seek; the
 * padding mask, token types and pooling weights from hand-worked rows; the
 * label list text. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "fw/runtime.h"

#define V 261
static const struct fw_rt_specials SP = { .cls = 257, .sep = 258, .mask = 259, .pad = 260 };

/* n positions: ordinary tokens, with [CLS]/[SEP] at every 50th and padding
 * (seg 0) at every 7th. */
static void fill(int32_t *tok, int32_t *seg, int64_t n)
{
	for (int64_t i = 0; i < n; i++) {
		tok[i] = (int32_t)((i * 2654435761u) % 256);
		seg[i] = i % 7 ? 1 : 0;
		if (i % 50 == 0)
			tok[i] = SP.cls;
		if (i % 50 == 1)
			tok[i] = SP.sep;
		if (!seg[i])
			tok[i] = SP.pad;
	}
}

static void within(const char *what, int64_t k, int64_t n, double p)
{
	double sd = sqrt(n * p * (1 - p));
	ck_assert_msg(fabs((double)k - n * p) <= 4.5 * sd, "%s: %lld of %lld, expected %.1f +- %.1f",
		      what, (long long)k, (long long)n, n * p, 4.5 * sd);
}

START_TEST(test_mask_proportions)
{
	int64_t n = 400000;
	int32_t *tok = malloc(sizeof(int32_t) * n), *orig = malloc(sizeof(int32_t) * n);
	int32_t *tg = malloc(sizeof(int32_t) * n), *seg = malloc(sizeof(int32_t) * n);
	fill(orig, seg, n);
	memcpy(tok, orig, sizeof(int32_t) * n);
	struct fw_rt_mlm c = { .prob = 0.15, .vocab = V, .sp = SP, .seed = 42 };
	fw_rt_mlm_mask(&c, 3, tok, tg, seg, n);
	int64_t cand = 0, chosen = 0, masked = 0, kept = 0, other = 0;
	for (int64_t i = 0; i < n; i++) {
		bool special = orig[i] == SP.cls || orig[i] == SP.sep || !seg[i];
		if (special) {
			ck_assert_msg(tg[i] == -1 && tok[i] == orig[i], "special/padding %lld masked",
				      (long long)i);
			continue;
		}
		cand++;
		if (tg[i] < 0) {
			ck_assert_int_eq(tok[i], orig[i]);
			continue;
		}
		ck_assert_int_eq(tg[i], orig[i]);
		ck_assert(tok[i] >= 0 && tok[i] < V);
		chosen++;
		masked += tok[i] == SP.mask;
		kept += tok[i] == orig[i];
		other += tok[i] != SP.mask && tok[i] != orig[i];
	}
	within("chosen", chosen, cand, 0.15);
	/* a random replacement lands on [MASK] or on the token itself 1/V each */
	within("[MASK]", masked, chosen, 0.8 + 0.1 / V);
	within("kept", kept, chosen, 0.1 + 0.1 / V);
	within("random", other, chosen, 0.1 * (1 - 2.0 / V));
	free(tok);
	free(orig);
	free(tg);
	free(seg);
}
END_TEST

START_TEST(test_mask_determinism)
{
	enum { N = 4096 };
	static int32_t seg[N], a[N], b[N], ta[N], tb[N];
	struct fw_rt_mlm c = { .prob = 0.15, .vocab = V, .sp = SP, .seed = 7 };
	fill(a, seg, N);
	memcpy(b, a, sizeof(a));
	fw_rt_mlm_mask(&c, 5, a, ta, seg, N);
	fw_rt_mlm_mask(&c, 5, b, tb, seg, N);
	ck_assert(!memcmp(a, b, sizeof(a)) && !memcmp(ta, tb, sizeof(ta)));
	fill(b, seg, N);
	fw_rt_mlm_mask(&c, 6, b, tb, seg, N);
	ck_assert_msg(memcmp(ta, tb, sizeof(ta)), "another micro-batch index masks alike");
	fill(b, seg, N);
	c.seed = 8;
	fw_rt_mlm_mask(&c, 5, b, tb, seg, N);
	ck_assert_msg(memcmp(ta, tb, sizeof(ta)), "another seed masks alike");
}
END_TEST

/* A loader over MLM rows, resumed by seek, serves the same masked batches
 * as the one that ran through. */
START_TEST(test_mask_resume)
{
	enum { ROWS = 24, T = 16, B = 2 };
	struct fw_rt_mlm c = { .prob = 0.3, .vocab = V, .sp = SP, .seed = 11 };
	struct fw_rt_loader l1, l2;
	struct fw_err err = { 0 };
	for (int k = 0; k < 2; k++) {
		struct fw_rt_rows r = { .n = ROWS, .T = T, .tokens = malloc(4 * ROWS * T),
					.targets = malloc(4 * ROWS * T), .seg = malloc(4 * ROWS * T) };
		fill(r.tokens, r.seg, ROWS * T);
		for (int i = 0; i < ROWS * T; i++)
			r.targets[i] = -1;
		ck_assert_int_eq(fw_rt_loader_from_rows(k ? &l2 : &l1, &r, B, true, 3, &err), FW_OK);
		(k ? &l2 : &l1)->mlm = &c;
	}
	int32_t t1[B * T], g1[B * T], s1[B * T], t2[B * T], g2[B * T], s2[B * T];
	for (int step = 0; step < 17; step++)   /* into the second epoch */
		fw_rt_loader_next(&l1, t1, g1, s1);
	fw_rt_loader_seek(&l2, l1.epoch, l1.cursor);
	for (int step = 0; step < 5; step++) {
		fw_rt_loader_next(&l1, t1, g1, s1);
		fw_rt_loader_next(&l2, t2, g2, s2);
		ck_assert(!memcmp(t1, t2, sizeof(t1)) && !memcmp(g1, g2, sizeof(g1)));
	}
	fw_rt_loader_close(&l1);
	fw_rt_loader_close(&l2);
}
END_TEST

START_TEST(test_encoder_masks)
{
	/* [CLS] a [SEP] b [SEP] pad pad / [CLS] a [SEP] pad ... */
	enum { B = 2, T = 7 };
	const int32_t seg[B * T] = { 1, 1, 1, 2, 2, 0, 0, 1, 1, 1, 0, 0, 0, 0 };
	int32_t pos[B * T], types[B * T];
	float bias[B * T * T], pool[B * T];
	fw_rt_encoder_masks(seg, B, T, pos, bias, types, pool);
	for (int b = 0; b < B; b++)
		for (int q = 0; q < T; q++) {
			ck_assert_int_eq(pos[b * T + q], q);
			ck_assert_int_eq(types[b * T + q], seg[b * T + q] == 2);
			float w = seg[b * T + q] ? 1.0f / (b ? 3 : 5) : 0.0f;
			ck_assert_float_eq(pool[b * T + q], w);
			for (int k = 0; k < T; k++) {
				float v = bias[(b * T + q) * T + k];
				ck_assert(seg[b * T + k] ? v == 0.0f : isinf(v) && v < 0);
			}
		}
}
END_TEST

START_TEST(test_labels_text)
{
	struct fw_rt_labels l;
	struct fw_err err = { 0 };
	ck_assert_int_eq(fw_rt_labels_parse(&l, "neg,neutral,pos", &err), FW_OK);
	ck_assert_int_eq(l.n, 3);
	ck_assert_str_eq(l.names[1], "neutral");
	char *s = fw_rt_labels_join(&l);
	ck_assert_str_eq(s, "neg,neutral,pos");
	free(s);
	fw_rt_labels_free(&l);
	ck_assert_int_eq(fw_rt_labels_parse(&l, "a,,b", &err), FW_ERR_INVALID);
	fw_rt_labels_free(&l);
	ck_assert_int_eq(fw_rt_labels_parse(&l, "a,b,a", &err), FW_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "\"a\" twice"), "%s", err.msg);
	fw_rt_labels_free(&l);
	ck_assert_int_eq(fw_rt_labels_parse(&l, "", &err), FW_OK);
	ck_assert_int_eq(l.n, 0);
	fw_rt_labels_free(&l);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("rt_tasks");
	TCase *tc = fwt_tcase("tasks", 60);
	tcase_add_test(tc, test_mask_proportions);
	tcase_add_test(tc, test_mask_determinism);
	tcase_add_test(tc, test_mask_resume);
	tcase_add_test(tc, test_encoder_masks);
	tcase_add_test(tc, test_labels_text);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
