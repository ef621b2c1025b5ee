/* test_rt_sweep.c - sweep files (fw/runtime/sweep.h): parse errors with
 * their lines, the trial count (the product of the axes, by hand), a trial's
 * INI, changed definitions, and the aggregates against closed forms. The
 * CLI, the draws and the rules against transcriptions: tests/sweep_cli.py. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "fw/runtime.h"

#define BASE "[run]\nplugins = arch/decoder, attention/mha, optim/adamw, peft/lora\nseed = 10\n" \
	     "[peft/lora]\nlora-r = 4\n"

struct bad_case {
	const char *text, *want;      /* want: the start of the message after "s.ini:" */
};

static const struct bad_case bad[] = {
	{ BASE "[grid]\nlr =\n", "7: lr: empty axis" },
	{ BASE "[random]\nlr = uniform(2, 1)\n", "7: lr: low 2 >= high 1" },
	{ BASE "[random]\nlr = uniform(1, 1)\n", "7: lr: low 1 >= high 1" },
	{ BASE "[random]\nlr = loguniform(0, 1)\n", "7: lr: loguniform() needs low > 0" },
	{ BASE "[random]\nlr = loguniform(-1, 1)\n", "7: lr: loguniform() needs low > 0" },
	{ BASE "[random]\nlr = gauss(0, 1)\n", "7: lr: unknown distribution 'gauss'" },
	{ BASE "[random]\nlr = int(0.5, 3)\n", "7: lr: int() takes two integers" },
	{ "[sweep]\nmetric = accuracy\n" BASE "[grid]\nlr = 1\n", "2: metric: unknown metric" },
	{ "[sweep]\ntrials = 0\n" BASE "[random]\nlr = uniform(0, 1)\n", "2: trials: '0'" },
	{ "[sweep]\ntrials = 3\n" BASE "[grid]\nlr = 1\n", "2: trials: random draws need" },
	{ "[sweep]\ndirection = up\n" BASE "[grid]\nlr = 1\n", "2: direction:" },
	{ "[sweep]\nmetrik = loss\n" BASE "[grid]\nlr = 1\n", "2: metrik: unknown [sweep] key" },
	{ BASE "[link a]\nlr = 1, 2\nmin-lr = 1\n", "8: min-lr: 1 values where [link a] has 2" },
	{ BASE "[grid]\nlr = 1, 2\n[random]\nlr = uniform(0, 1)\n", "9: lr: is an axis twice" },
	{ BASE "[grid]\nplugins.attn = attention/mha\n", "7: plugins.attn: plugin axes are" },
	{ BASE, "1: sweep: no axes" },
	{ BASE "[axes]\nlr = 1\n", "7: lr: section [axes]" },
};
#define N_BAD ((int)(sizeof(bad) / sizeof(bad[0])))

START_TEST(test_bad_files)
{
	struct fw_sweep sw;
	struct fw_err err = { 0 };
	ck_assert_int_eq(fw_sweep_parse_text(bad[_i].text, "s.ini", &sw, &err), FW_ERR_INVALID);
	char want[256];
	snprintf(want, sizeof(want), "s.ini:%s", bad[_i].want);
	ck_assert_msg(!strncmp(err.msg, want, strlen(want)), "got '%s', want '%s...'", err.msg, want);
	ck_assert_ptr_null(strchr(err.msg, '\n'));
}
END_TEST

/* 3 lr x 2 link rows x 4 draws x 2 seeds; the [random] choice counts once. */
START_TEST(test_count_and_order)
{
	const char *text = "[sweep]\ntrials = 4\nrepeats = 2\n" BASE
			   "[grid]\nlr = 1e-3, 3e-3, 1e-2\n"
			   "[link w]\nlr-warmup-iters = 0 | 5\nmin-lr = 0 | 1e-4\n"
			   "[random]\nweight-decay = choice(0, 0.1)\n";
	struct fw_sweep sw;
	struct fw_err err = { 0 };
	ck_assert_int_eq(fw_sweep_parse_text(text, "s.ini", &sw, &err), FW_OK);
	ck_assert_int_eq(fw_sweep_count(&sw), 3 * 2 * 4 * 2);
	struct fw_sweep_trial t;
	/* index 29 = ((lr 1 * 2 + row 1) * 4 + draw 2) * 2 + seed 1 */
	ck_assert_int_eq(fw_sweep_trial(&sw, 29, &t, &err), FW_OK);
	ck_assert_int_eq(t.seed, 11);         /* base seed 10 + repeat 1 */
	ck_assert_int_eq(t.n, 4);
	ck_assert_str_eq(t.key[0], "lr");
	ck_assert_str_eq(t.value[0], "3e-3");
	ck_assert_str_eq(t.value[1], "5");
	ck_assert_str_eq(t.value[2], "1e-4");
	/* the draw: choice index floor(u * 2) of u for (seed 0, draw 2, axis 2) */
	double u = fw_sweep_uniform(0, 2, 2);
	ck_assert_str_eq(t.value[3], u < 0.5 ? "0" : "0.1");
	char *ini = fw_sweep_trial_ini(&sw, &t);
	/* the base, the plugin section, then [run] with the parameters last */
	ck_assert_ptr_nonnull(strstr(ini, "[peft/lora]\nlora-r = 4\n[run]\nlr = 3e-3\n"));
	ck_assert_ptr_nonnull(strstr(ini, "seed = 11\n"));
	free(ini);
	fw_sweep_trial_free(&t);
	ck_assert_int_eq(fw_sweep_trial(&sw, 48, &t, &err), FW_ERR_INVALID);
	fw_sweep_free(&sw);
}
END_TEST

/* plugins.KIND replaces the kind; "none" drops it; a section of a plugin
 * the trial does not load is left out. */
START_TEST(test_plugin_axis)
{
	const char *text = BASE "[link p]\nplugins.peft = peft/lora, peft/ia3, none\n"
			   "lora-r = 8, -, -\n";
	struct fw_sweep sw;
	struct fw_err err = { 0 };
	ck_assert_int_eq(fw_sweep_parse_text(text, "s.ini", &sw, &err), FW_OK);
	ck_assert_int_eq(fw_sweep_count(&sw), 3);
	const char *want[] = { "arch/decoder,attention/mha,optim/adamw,peft/lora",
			       "arch/decoder,attention/mha,optim/adamw,peft/ia3",
			       "arch/decoder,attention/mha,optim/adamw" };
	for (int i = 0; i < 3; i++) {
		struct fw_sweep_trial t;
		ck_assert_int_eq(fw_sweep_trial(&sw, i, &t, &err), FW_OK);
		char *p = fw_sweep_trial_plugins(&sw, &t), *ini = fw_sweep_trial_ini(&sw, &t);
		ck_assert_str_eq(p, want[i]);
		ck_assert(!strstr(ini, "[peft/lora]") == (i != 0));
		ck_assert(!strstr(ini, "lora-r = 8") == (i != 0));
		ck_assert_int_eq(t.seed, -1);     /* no repeats: the base's own seed */
		free(p);
		free(ini);
		fw_sweep_trial_free(&t);
	}
	fw_sweep_free(&sw);
}
END_TEST

static bool compatible(const char *old_text, const char *new_text, char *why, size_t len)
{
	struct fw_sweep a, b;
	struct fw_err err = { 0 };
	ck_assert_int_eq(fw_sweep_parse_text(old_text, "old.ini", &a, &err), FW_OK);
	ck_assert_int_eq(fw_sweep_parse_text(new_text, "new.ini", &b, &err), FW_OK);
	bool ok = fw_sweep_compatible(&a, &b, why, len);
	fw_sweep_free(&a);
	fw_sweep_free(&b);
	return ok;
}

START_TEST(test_changes)
{
	char why[800];
	const char *g = "[sweep]\nrepeats = 2\n" BASE "[grid]\nlr = 1, 2\n";
	ck_assert(compatible(g, g, why, sizeof(why)));
	ck_assert(compatible(g, "[sweep]\nrepeats = 3\n" BASE "[grid]\nlr = 1, 2, 3\n", why,
			     sizeof(why)));
	ck_assert(!compatible(g, "[sweep]\nrepeats = 2\n" BASE "[grid]\nlr = 1, 3\n", why,
			      sizeof(why)));
	ck_assert_str_eq(why, "new.ini:9: lr: value 2 changed or removed (values may only be added)");
	ck_assert(!compatible(g, "[sweep]\nrepeats = 2\n[run]\nplugins = arch/decoder, "
			      "attention/mha, optim/adamw, peft/lora\nseed = 11\n[peft/lora]\nlora-r = 4\n"
			      "[grid]\nlr = 1, 2\n", why, sizeof(why)));
	ck_assert_str_eq(why, "new.ini:5: seed: [run] value changed (was 10)");
	ck_assert(!compatible(g, "[sweep]\nrepeats = 1\n" BASE "[grid]\nlr = 1, 2\n", why,
			      sizeof(why)));
	ck_assert_ptr_nonnull(strstr(why, "new.ini:2: repeats:"));
}
END_TEST

START_TEST(test_aggregates)
{
	/* Wikipedia's standard deviation example: mean 5, sample variance 32/7 */
	const double x[] = { 2, 4, 4, 4, 5, 5, 7, 9 };
	double mean, std;
	fw_sweep_mean_std(x, 8, &mean, &std);
	ck_assert(fabs(mean - 5) < 1e-15 && fabs(std - sqrt(32.0 / 7)) < 1e-15);
	fw_sweep_mean_std(x, 1, &mean, &std);
	ck_assert(mean == 2 && std == 0);
	/* linear interpolation between order statistics (numpy's default) */
	const double y[] = { 3, 1, 4, 2 };
	ck_assert(fw_sweep_quantile(y, 4, 0.5) == 2.5);
	ck_assert(fw_sweep_quantile(y, 4, 2.0 / 3) == 3);
	ck_assert(fabs(fw_sweep_quantile(y, 4, 0.25) - 1.75) < 1e-15);
	ck_assert(fw_sweep_quantile(y, 4, 0) == 1 && fw_sweep_quantile(y, 4, 1) == 4);
	ck_assert(isnan(fw_sweep_quantile(y, 0, 0.5)));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("rt_sweep");
	TCase *tc = fwt_tcase("sweep", 30);
	tcase_add_loop_test(tc, test_bad_files, 0, N_BAD);
	tcase_add_test(tc, test_count_and_order);
	tcase_add_test(tc, test_plugin_axis);
	tcase_add_test(tc, test_changes);
	tcase_add_test(tc, test_aggregates);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
