/* fw/runtime/sweep.h - research sweeps: the sweep file, its trials, the
 * early-stopping rules and the aggregates. Pure logic (no processes, no
 * plugins): fwrun sweep runs the trials, fwrun report reads the results.
 *
 * A sweep file is INI (fw/runtime/ini.h), with these sections:
 *
 *   [sweep]        metric = eval_loss | loss   direction = min | max
 *                  trials = N (random draws)   seed = S (of the draws)
 *                  repeats = R (seeds per configuration, base seed + r)
 *                  seeds = 1, 2, 3 (explicit seeds instead)
 *                  early-stop = none | median | asha
 *                  grace-steps, min-trials (median); asha-min-steps, asha-eta
 *   [run], top     the base run: fwrun train's options, exactly as a --config
 *   [KIND/NAME]    a plugin's options, as in a --config file
 *   [grid]         KEY = v1, v2, ...   one axis per key, crossed (cartesian)
 *   [random]       KEY = uniform(a, b) | loguniform(a, b) | int(a, b) | choice(v1, v2, ...)
 *   [link NAME]    keys with equally many values that change together (one axis)
 *
 * KEY is a flat option name (lr, lora-r) or plugins.KIND (plugins.attention =
 * attention/mha, attention/flash; "none" drops that kind). Values are split
 * at '|' when a value has one, else at ','. The value "-" leaves the key out
 * of that trial (a linked block pairing peft/lora with lora-r and peft/ia3
 * with nothing).
 *
 * Trials: every grid value x every link row x N random draws (1 without
 * [random]) x R seeds, in that order (the last axis varies fastest, the seed
 * fastest of all). Draws come from splitmix64 on (seed, draw index, axis),
 * so adding trials keeps the old ones. A trial's id hashes its parameters
 * and seed: a trial keeps its id, and its directory, when values are added.
 */
#ifndef FW_RUNTIME_SWEEP_H
#define FW_RUNTIME_SWEEP_H

#include <stdbool.h>
#include <stdint.h>

#include "fw/fw.h"

#ifdef __cplusplus
extern "C" {
#endif

enum fw_sweep_dist { FW_SWEEP_LIST, FW_SWEEP_UNIFORM, FW_SWEEP_LOGUNIFORM, FW_SWEEP_INT,
		     FW_SWEEP_CHOICE };
enum fw_sweep_stop { FW_SWEEP_STOP_NONE, FW_SWEEP_STOP_MEDIAN, FW_SWEEP_STOP_ASHA };

/* One "key = value" of the file, with its line. */
struct fw_sweep_entry {
	char *section, *key, *value;
	int line;
};

/* A grid key, a random key or a linked block. value[k][v] is key k's v-th
 * value (LIST, CHOICE); lo/hi bound the other distributions. */
struct fw_sweep_axis {
	char *section;                /* "grid", "random", "link NAME" */
	enum fw_sweep_dist dist;
	int n_keys, n_values;
	char **key;
	int *line;
	char ***value;
	double lo, hi;
};

struct fw_sweep_rule {
	enum fw_sweep_stop kind;
	int64_t grace_steps;          /* median: no decision before this step */
	int min_trials;               /* median: completed trials needed */
	int64_t asha_min_steps;       /* ASHA: the first rung; then x eta */
	double asha_eta;
};

struct fw_sweep {
	char *path;
	struct fw_sweep_entry *base;  /* [run], top and [KIND/NAME] entries */
	int n_base;
	struct fw_sweep_entry *setting;   /* [sweep] entries, for fw_sweep_compatible */
	int n_setting;
	struct fw_sweep_axis *axis;
	int n_axes;
	char metric[32];
	bool minimize;
	int64_t draws;                /* random trials per grid point (1 without [random]) */
	uint64_t draw_seed;
	int n_seeds;
	int64_t *seeds;               /* NULL: the base run's seed (no --seed given) */
	struct fw_sweep_rule rule;
};

/* One trial: its parameters (key[i] = value[i], NULL values left out), its
 * seed (-1: the base run's), its configuration (the same for every seed)
 * and its id (16 hex digits). */
struct fw_sweep_trial {
	int64_t index, config;
	int repeat;
	int64_t seed;
	int n;
	char **key, **value;
	char id[17];
};

/* Reads and checks a sweep file. Errors are one line "PATH:LINE: ..." naming
 * the key (FW_ERR_INVALID): an empty axis, a distribution with low >= high,
 * log-uniform with low <= 0, an unknown metric or direction, trials < 1, a
 * linked block with unequal lengths, an unknown [sweep] key. */
enum fw_status fw_sweep_parse(const char *path, struct fw_sweep *sw, struct fw_err *err);
/* The same from text; path only names it in errors. */
enum fw_status fw_sweep_parse_text(const char *text, const char *path, struct fw_sweep *sw,
				   struct fw_err *err);
void fw_sweep_free(struct fw_sweep *sw);

/* Trials, and each by index (0 <= index < fw_sweep_count). */
int64_t fw_sweep_count(const struct fw_sweep *sw);
enum fw_status fw_sweep_trial(const struct fw_sweep *sw, int64_t index,
			      struct fw_sweep_trial *t, struct fw_err *err);
void fw_sweep_trial_free(struct fw_sweep_trial *t);
/* The trial's run configuration as INI text for fwrun train --config
 * (malloc'd; NULL when out of memory): the base with plugins.KIND replaced,
 * the sections of plugins the trial does not load dropped, then [run] with
 * the parameters and the seed, so that they win over the base. */
char *fw_sweep_trial_ini(const struct fw_sweep *sw, const struct fw_sweep_trial *t);
/* The trial's plugins list (malloc'd). */
char *fw_sweep_trial_plugins(const struct fw_sweep *sw, const struct fw_sweep_trial *t);
/* The base run's value of key (in [run] or the top), or NULL. */
const char *fw_sweep_base_value(const struct fw_sweep *sw, const char *key);

/* Uniform double in [0, 1) of draw index (of seed) for axis: splitmix64 of
 * seed ^ (index * 0x9E3779B97F4A7C15) ^ (axis << 32), top 53 bits. */
double fw_sweep_uniform(uint64_t seed, int64_t index, int axis);

/* Whether a sweep directory made by old can go on with sw: the same base,
 * metric, direction, rule, draw seed and axes, where axes may gain values,
 * trials, repeats and seeds only grow. If not, why says "PATH:LINE: KEY ..."
 * of the first difference. */
bool fw_sweep_compatible(const struct fw_sweep *old, const struct fw_sweep *sw, char *why,
			 size_t len);

/* --- early stopping (metric curves at eval steps) ------------------------------ */

struct fw_sweep_curve {
	const int64_t *step;          /* ascending */
	const double *value;
	int n;
};

/* Median stopping (Golovin et al. 2017, Vizier; as Ray Tune's
 * MedianStoppingRule without time windows): at step t >= grace_steps, with at
 * least min_trials completed curves that have a value at a step <= t, stop
 * when the trial's best value up to t is worse than the median of those
 * curves' running means up to t. */
bool fw_sweep_median_stop(const struct fw_sweep_rule *r, bool minimize,
			  const struct fw_sweep_curve *self, int64_t t,
			  const struct fw_sweep_curve *done, int n_done);

/* Asynchronous successive halving (Li et al. 2018; as Ray Tune's
 * ASHAScheduler): rungs at asha_min_steps * eta^k. A trial's value at the
 * first step >= a rung's milestone (highest rung first, once per rung) is
 * compared with the (1 - 1/eta) quantile (linear, numpy's) of the values
 * recorded at that rung before it, then recorded; the trial stops when it is
 * worse. State: the values recorded per rung. */
struct fw_sweep_asha {
	struct fw_sweep_rule rule;
	bool minimize;
	int n_rungs;
	int64_t milestone[48];
	int n_rec[48], cap[48];
	double *rec[48];
	int64_t *owner[48];           /* the trial of each recorded value */
};
void fw_sweep_asha_init(struct fw_sweep_asha *a, const struct fw_sweep_rule *r, bool minimize,
			int64_t max_steps);
/* One eval result of trial: true means stop it. */
bool fw_sweep_asha_report(struct fw_sweep_asha *a, int64_t trial, int64_t step, double value);
void fw_sweep_asha_free(struct fw_sweep_asha *a);

/* --- aggregates ----------------------------------------------------------------- */

/* Linear-interpolated q-quantile (0..1) of x[0..n) (sorts a copy); NAN if n == 0. */
double fw_sweep_quantile(const double *x, int n, double q);
/* Mean and sample standard deviation (n - 1; 0 when n < 2). */
void fw_sweep_mean_std(const double *x, int n, double *mean, double *std);

#ifdef __cplusplus
}
#endif
#endif
