/* test_rt_schedule.c - the runtime's LR schedule (fw/runtime/schedule.h)
 * against values derived by hand from Megatron-LM's get_lr (the oracle of
 * tests/lr_schedule.py): schedules chosen so every value is a short
 * closed form. max 1, min 0.1, so lr = 0.1 + 0.9 coeff after warmup. */
#include <math.h>

#include "harness.h"
#include "fw/runtime.h"

struct lr_case {
	const char *what;
	struct fw_lr_schedule s;
	int64_t n;
	double lr;
};

#define S(style_, warm, dec) { .max_lr = 1.0, .min_lr = 0.1, .init_lr = 0.0, \
			       .warmup = warm, .decay = dec, .style = style_ }
#define WSD(w) { .max_lr = 1.0, .min_lr = 0.1, .decay = 10, .style = FW_LR_WSD, \
		 .wsd_style = w, .wsd_decay = 4 }

static const struct lr_case cases[] = {
	/* warmup: n / warmup of max, whatever the style; the first step moves */
	{ "warmup 1/4", S(FW_LR_LINEAR, 4, 12), 1, 0.25 },
	{ "warmup 2/4", S(FW_LR_COSINE, 4, 12), 2, 0.5 },
	{ "warmup end at max", S(FW_LR_LINEAR, 4, 12), 4, 1.0 },
	{ "warmup from init 0.2", { .max_lr = 1.0, .min_lr = 0.1, .init_lr = 0.2, .warmup = 4,
				    .decay = 12, .style = FW_LR_LINEAR }, 1, 0.4 },
	{ "constant after warmup", S(FW_LR_CONSTANT, 4, 12), 100, 1.0 },
	/* linear: r = (n - 4) / 8 */
	{ "linear half way", S(FW_LR_LINEAR, 4, 12), 8, 0.55 },
	{ "linear quarter", S(FW_LR_LINEAR, 4, 12), 6, 0.1 + 0.9 * 0.75 },
	{ "linear at decay", S(FW_LR_LINEAR, 4, 12), 12, 0.1 },
	{ "linear past decay", S(FW_LR_LINEAR, 4, 12), 13, 0.1 },
	/* cosine: (cos(pi r) + 1) / 2: r = 1/2 -> 1/2; r = 1/4 -> (1 + sqrt(1/2)) / 2 */
	{ "cosine half way", S(FW_LR_COSINE, 4, 12), 8, 0.55 },
	{ "cosine quarter", S(FW_LR_COSINE, 4, 12), 6, 0.1 + 0.9 * (1 + M_SQRT1_2) / 2 },
	{ "cosine no warmup, step 0 of decay", S(FW_LR_COSINE, 0, 12), 0, 1.0 },
	/* inverse square root: max sqrt(warmup) / sqrt(n), never below min */
	{ "inv-sqrt n=16", S(FW_LR_INV_SQRT, 4, 1000), 16, 0.5 },
	{ "inv-sqrt n=100", S(FW_LR_INV_SQRT, 4, 1000), 100, 0.2 },
	{ "inv-sqrt clamps at min", S(FW_LR_INV_SQRT, 4, 1000), 900, 0.1 },
	{ "inv-sqrt past decay", S(FW_LR_INV_SQRT, 4, 1000), 1001, 0.1 },
	/* WSD over 10 iterations, the last 4 annealing: stable through 6 */
	{ "WSD stable", WSD(FW_WSD_EXPONENTIAL), 6, 1.0 },
	{ "WSD exponential a=1/2", WSD(FW_WSD_EXPONENTIAL), 8, 0.1 + 0.9 * (M_SQRT2 - 1) },
	{ "WSD exponential end", WSD(FW_WSD_EXPONENTIAL), 10, 0.1 },
	{ "WSD linear a=1/2", WSD(FW_WSD_LINEAR), 8, 0.55 },
	{ "WSD linear a=1/4", WSD(FW_WSD_LINEAR), 7, 0.1 + 0.9 * 0.75 },
	{ "WSD cosine a=1/2", WSD(FW_WSD_COSINE), 8, 0.55 },
	{ "WSD minus_sqrt a=1/4", WSD(FW_WSD_MINUS_SQRT), 7, 0.55 },
	{ "WSD minus_sqrt a=1/2", WSD(FW_WSD_MINUS_SQRT), 8, 0.1 + 0.9 * (1 - M_SQRT1_2) },
	{ "WSD past decay", WSD(FW_WSD_LINEAR), 11, 0.1 },
};
#define N_CASES ((int)(sizeof(cases) / sizeof(cases[0])))

START_TEST(test_lr_table)
{
	const struct lr_case *c = &cases[_i];
	double got = fw_lr_at(&c->s, c->n);
	ck_assert_msg(fabs(got - c->lr) <= 1e-12, "%s: lr(%lld) = %.15g, expected %.15g", c->what,
		      (long long)c->n, got, c->lr);
}
END_TEST

START_TEST(test_style_names)
{
	struct fw_err err = { 0 };
	for (int i = 0; fw_lr_style_names[i]; i++) {
		enum fw_lr_style st = FW_LR_CONSTANT;
		ck_assert_int_eq(fw_lr_style_parse(fw_lr_style_names[i], &st, &err), FW_OK);
		ck_assert_int_eq((int)st, i);
	}
	for (int i = 0; fw_wsd_style_names[i]; i++) {
		enum fw_wsd_style st = FW_WSD_EXPONENTIAL;
		ck_assert_int_eq(fw_wsd_style_parse(fw_wsd_style_names[i], &st, &err), FW_OK);
		ck_assert_int_eq((int)st, i);
	}
	ck_assert_str_eq(fw_lr_style_names[FW_LR_INV_SQRT], "inverse-square-root");
	ck_assert_str_eq(fw_wsd_style_names[FW_WSD_MINUS_SQRT], "minus_sqrt");
	enum fw_lr_style st;
	ck_assert_int_eq(fw_lr_style_parse("cosin", &st, &err), FW_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "cosin"));
}
END_TEST

/* Monotone: after warmup no decaying style ever raises the lr. */
START_TEST(test_monotone_after_warmup)
{
	for (int style = FW_LR_LINEAR; style <= FW_LR_WSD; style++) {
		struct fw_lr_schedule s = { .max_lr = 3e-4, .min_lr = 3e-5, .warmup = 10,
					    .decay = 200, .style = (enum fw_lr_style)style,
					    .wsd_decay = 50 };
		double prev = fw_lr_at(&s, 10);
		for (int64_t n = 11; n <= 250; n++) {
			double lr = fw_lr_at(&s, n);
			ck_assert_msg(lr <= prev + 1e-18 && lr >= s.min_lr - 1e-18,
				      "%s: lr(%lld) = %g after %g", fw_lr_style_names[style],
				      (long long)n, lr, prev);
			prev = lr;
		}
	}
}
END_TEST

int main(void)
{
	Suite *s = suite_create("rt_schedule");
	TCase *tc = fwt_tcase("schedule", 30);
	tcase_add_loop_test(tc, test_lr_table, 0, N_CASES);
	tcase_add_test(tc, test_style_names);
	tcase_add_test(tc, test_monotone_after_warmup);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
