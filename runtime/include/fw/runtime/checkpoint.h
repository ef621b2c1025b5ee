/* fw/runtime/checkpoint.h - the checkpoint schema, in one place.
 *
 * A checkpoint is an fw HDF5 tensor file (docs/hdf5-format.md) holding every
 * parameter of the model, then the optimizer's state tensors
 * ("optim.<param>.<state>"), and these root string attributes:
 *
 *   fw_checkpoint  "1": a checkpoint (a plain weights file has no such mark)
 *   config         the run's resolved configuration (INI text)
 *   step           completed optimizer steps
 *   data_epoch     the training data's position: epoch ...
 *   data_cursor    ... and micro-batch within it
 *   tokens         tokens consumed so far
 *   seed           the run's seed
 *   optimizer      the optim plugin's name ("" when none)
 *   tokenizer      fw_tokenizer_serialize of the run's tokenizer (absent: none)
 *   owners         which plugin made each parameter: one "TENSOR PLUGIN" line
 *                  each ("h.0.attn.c_attn.lora_A peft/lora"); absent in
 *                  files written before it or without the plugins
 *   skipped_iters  steps skipped on overflow so far (absent in older files: 0)
 *   loss_scale, growth_tracker, hysteresis_tracker
 *                  a loss scaler's state (fw/runtime/scaler.h); absent: no scaler
 *
 * Files of a run directory are named ckpt-<8 digits>.h5 (by step) and
 * adapter-<8 digits>.h5 (the peft plugin's adapter-only file); a writer's
 * temporary file (NAME.tmp.PID, fw/runtime/file.h) never matches.
 */
#ifndef FW_RUNTIME_CHECKPOINT_H
#define FW_RUNTIME_CHECKPOINT_H

#include <stdint.h>

#include "fw/loader.h"
#include "fw/tensor.h"
#include "fw/runtime/scaler.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FW_CKPT_ATTR_MARK "fw_checkpoint"
#define FW_CKPT_ATTR_CONFIG "config"
#define FW_CKPT_ATTR_TOKENIZER "tokenizer"
#define FW_CKPT_ATTR_OWNERS "owners"

struct fw_rt_ckpt_meta {
	const char *config;               /* may be NULL: "" is stored */
	const char *optimizer;            /* may be NULL: "" is stored */
	const char *tokenizer;            /* NULL: no tokenizer attribute */
	int64_t step, data_epoch, data_cursor, tokens;
	int64_t seed;
	/* The model's plugins: the owners attribute (fw_rt_param_owner of each
	 * parameter). NULL: no owners attribute. */
	const struct fw_plugin_slots *plugins;
	int64_t skipped;                  /* steps skipped on overflow */
	const struct fw_rt_grad_scaler *scaler;   /* NULL: no scaler attributes */
};

/* Writes a checkpoint (atomically, through fw_h5_save): params[0..n_params)
 * then state[0..n_state), and meta's attributes. */
enum fw_status fw_rt_ckpt_save(const char *path, struct fw_tensor *const *params, int n_params,
			       struct fw_tensor *const *state, int n_state,
			       const struct fw_rt_ckpt_meta *meta, struct fw_err *err);

/* *is_ckpt: whether path carries the checkpoint mark (false for a plain
 * weights file). FW_ERR_IO or FW_ERR_FORMAT when path cannot be read as an
 * fw HDF5 file at all. */
enum fw_status fw_rt_ckpt_probe(const char *path, bool *is_ckpt, struct fw_err *err);

/* Reads step, data_epoch, data_cursor, tokens and skipped into meta (the other
 * members are left as they are). FW_ERR_NOT_FOUND for a missing attribute,
 * FW_ERR_FORMAT naming one that is not an integer. */
enum fw_status fw_rt_ckpt_read_progress(const char *path, struct fw_rt_ckpt_meta *meta,
					struct fw_err *err);

/* A loss scaler's scale and trackers into s (its settings are left as
 * they are); FW_ERR_NOT_FOUND when the file has none. */
enum fw_status fw_rt_ckpt_read_scaler(const char *path, struct fw_rt_grad_scaler *s,
				      struct fw_err *err);

/* The configuration attribute of a checkpoint, weights or adapter file
 * (fw_malloc'd INI text, caller fw_free()s it); FW_ERR_NOT_FOUND without one. */
enum fw_status fw_rt_ckpt_read_config(const char *path, char **config, struct fw_err *err);

/* The plugin that owns tensor name by path's owners attribute: fw_malloc'd
 * "kind/name", or NULL when the file does not say (no attribute, no line). */
char *fw_rt_ckpt_owner(const char *path, const char *name);

/* N when name is exactly prefix, decimal digits, suffix ("ckpt-", N, ".h5");
 * -1 otherwise (signs, spaces, trailing text, a temporary file). */
long long fw_rt_numbered_name(const char *name, const char *prefix, const char *suffix);

/* arg itself when it is not a directory; in a directory, the regular file
 * PREFIX<digits>.h5 with the largest number, or "" when there is none.
 * FW_ERR_IO when arg does not exist. */
enum fw_status fw_rt_newest_file(const char *arg, const char *prefix, char *out, size_t len,
				 struct fw_err *err);

#ifdef __cplusplus
}
#endif
#endif
