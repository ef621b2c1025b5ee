/* test_rt_sample.c - the sampler (fw/runtime/sample.h): greedy, top-k,
 * top-p, the temperature, frequencies against the softmax, reproducible
 * draws, and the repetition penalty. */
#include <math.h>
#include <string.h>

#include "harness.h"
#include "fw/runtime.h"

enum { V = 4 };
/* probabilities 0.5, 0.3, 0.15, 0.05 (ids 2, 0, 3, 1) */
static const float logits[V] = { -1.2039728f, -2.9957323f, -0.6931472f, -1.8971200f };

START_TEST(test_greedy)
{
	struct fw_rt_cand c[V];
	ck_assert_int_eq(fw_rt_sample(logits, V, 0.0, 0, 1.0, 1, 0, c), 2);
	for (uint64_t k = 0; k < 50; k++) {
		ck_assert_int_eq(fw_rt_sample(logits, V, 1.0, 1, 1.0, 9, k, c), 2);    /* top-1 */
		ck_assert_int_eq(fw_rt_sample(logits, V, 1.0, 0, 0.4, 9, k, c), 2);    /* p 0.5 >= 0.4 */
	}
	/* a tie goes to the lower id */
	const float tie[3] = { 1.0f, 3.0f, 3.0f };
	ck_assert_int_eq(fw_rt_sample(tie, 3, 0.0, 0, 1.0, 1, 0, c), 1);
}
END_TEST

/* Frequencies over 20000 draws follow the softmax; top-k 2 and top-p 0.75
 * keep ids 2 and 0 only, renormalised (0.5 : 0.3). */
START_TEST(test_frequencies)
{
	enum { N = 20000 };
	struct fw_rt_cand c[V];
	const double p[V] = { 0.3, 0.05, 0.5, 0.15 };
	int n[V] = { 0 }, k2[V] = { 0 }, p75[V] = { 0 };
	for (uint64_t i = 0; i < N; i++) {
		n[fw_rt_sample(logits, V, 1.0, 0, 1.0, 42, i, c)]++;
		k2[fw_rt_sample(logits, V, 1.0, 2, 1.0, 43, i, c)]++;
		p75[fw_rt_sample(logits, V, 1.0, 0, 0.75, 44, i, c)]++;
	}
	for (int i = 0; i < V; i++)
		ck_assert_msg(fabs(n[i] / (double)N - p[i]) < 0.015, "id %d: %g vs %g", i,
			      n[i] / (double)N, p[i]);
	ck_assert(k2[1] == 0 && k2[3] == 0 && p75[1] == 0 && p75[3] == 0);
	ck_assert_msg(fabs(k2[2] / (double)N - 0.625) < 0.015, "%g", k2[2] / (double)N);
	ck_assert_msg(fabs(p75[2] / (double)N - 0.625) < 0.015, "%g", p75[2] / (double)N);
	/* a low temperature sharpens: id 2 with p = 1 / (1 + 0.6^10 + ...) ~ 0.994 */
	int hot = 0;
	for (uint64_t i = 0; i < 2000; i++)
		hot += fw_rt_sample(logits, V, 0.1, 0, 1.0, 45, i, c) == 2;
	ck_assert_int_gt(hot, 1970);
}
END_TEST

START_TEST(test_reproducible)
{
	struct fw_rt_cand c[V];
	int diff = 0;
	for (uint64_t i = 0; i < 200; i++) {
		int a = fw_rt_sample(logits, V, 1.0, 0, 1.0, 7, i, c);
		ck_assert_int_eq(a, fw_rt_sample(logits, V, 1.0, 0, 1.0, 7, i, c));
		diff += a != fw_rt_sample(logits, V, 1.0, 0, 1.0, 8, i, c);
	}
	ck_assert_int_gt(diff, 0);                 /* another key, other draws */
}
END_TEST

START_TEST(test_repetition_penalty)
{
	const float in[4] = { 2.0f, -2.0f, 2.0f, -2.0f };
	const uint8_t seen[4] = { 1, 1, 0, 0 };
	float out[4];
	fw_rt_repetition_penalty(in, seen, 4, 2.0, out);
	ck_assert(out[0] == 1.0f && out[1] == -4.0f && out[2] == 2.0f && out[3] == -2.0f);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("rt_sample");
	TCase *tc = fwt_tcase("sample", 60);
	tcase_add_test(tc, test_greedy);
	tcase_add_test(tc, test_frequencies);
	tcase_add_test(tc, test_reproducible);
	tcase_add_test(tc, test_repetition_penalty);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
