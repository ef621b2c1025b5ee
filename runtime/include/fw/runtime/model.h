/* fw/runtime/model.h - a model from plugin instances: build, parameters,
 * weights shared between models.
 *
 *     struct fw_plugin_slots slots = { .arch = arch, .attention = mha, .peft = lora };
 *     struct fw_rt_model_spec spec = { .plugins = &slots, .batch = 4, .seq_len = 256,
 *                                      .seed = 1234, .training = true };
 *     struct fw_model m;
 *     struct fw_ctx *ctx = fw_ctx_new();
 *     if (fw_rt_model_build(&spec, ctx, &m, &err) != FW_OK) ...
 *     struct fw_graph *g = fw_graph_new(ctx, &m.loss, 1, &(struct fw_graph_opts){
 *             .backward = true, .training = true });
 *
 * The plugins are opened and initialised by the caller (fw/loader.h:
 * fw_plugin_open, fw_options_set, fw_plugin_init); one set of instances serves
 * one model at a time, and a second model in the same process opens its own.
 * The slots must outlive the model: the host routes linear layers, attention
 * and embeddings through them while the arch builds (fw_model.host_private),
 * and the peft plugin in them sees every hook of the build. A model without
 * the adapter (a frozen reference, a check of the arch's options) is built
 * from slots whose peft is NULL, never from the adapter model's slots.
 */
#ifndef FW_RUNTIME_MODEL_H
#define FW_RUNTIME_MODEL_H

#include "fw/loader.h"
#include "fw/runtime/log.h"

#ifdef __cplusplus
extern "C" {
#endif

struct fw_rt_model_spec {
	const struct fw_plugin_slots *plugins;  /* arch required; attention, peft optional;
						 * optim is not used here */
	int64_t batch, seq_len;                 /* micro-batch shape */
	uint64_t seed;                          /* dropout, and the arch's own randomness */
	bool training;                          /* dropout on */
	/* Rows holding several sequences or padding (SFT): the arch must give
	 * positions and attn_bias inputs (fw_rt_data_masks fills them). */
	bool segmented;
	/* Decoding: one KV cache per attention layer (fw_rt_model_n_layers);
	 * the model is (batch, seq_len) (0: 1; more than 1 is a prefill chunk,
	 * which needs per-row cache slots, ABI 1.5) and only logits are
	 * required. */
	struct fw_kv_cache *caches;
	int n_caches;
	/* Decoding an encoder-decoder (fw/runtime/seq2seq.h): the encoder's
	 * positions (fw_model.enc_len); batch, when set, is the decoding
	 * model's rows (beams; else 1). */
	int64_t enc_len;
};

/* Builds the arch's model in ctx, then the peft plugin's freeze and extra loss
 * term (added to m->loss). Errors name the plugin: "arch/decoder: ...".
 * FW_ERR_UNSUPPORTED: segmented rows with an arch that has no positions or
 * attn_bias inputs; decoding with an arch that cannot generate. */
enum fw_status fw_rt_model_build(const struct fw_rt_model_spec *spec, struct fw_ctx *ctx,
				 struct fw_model *m, struct fw_err *err);

/* A second instance of plugin p (opened from p's path), with p's option
 * values, initialised: plugin state for another model, or for a model
 * built once to check options and thrown away. fw_plugin_close frees it. */
enum fw_status fw_rt_plugin_twin(const struct fw_loaded *p, struct fw_loaded **twin,
				 struct fw_err *err);

/* The plugin that created parameter p of a model built from plugins: the
 * peft or attention plugin when one of its hooks made it (the host marks
 * those, FW_FLAG_BY_PEFT / FW_FLAG_BY_ATTENTION), else the arch ("kind/name"). */
const char *fw_rt_param_owner(const struct fw_tensor *p, const struct fw_plugin_slots *plugins);

/* The arch's attention layers, for the caches of a decoding model; 0 when
 * the arch cannot generate. */
int fw_rt_model_n_layers(const struct fw_plugin_slots *plugins);

/* Every parameter of ctx in creation order: *params (malloc'd, caller frees)
 * and the count; -1 when out of memory. */
int fw_rt_model_params(const struct fw_ctx *ctx, struct fw_tensor ***params);

/* Points each parameter of dst that src has (same name, dtype and shape) at
 * src's storage and freezes it: a frozen reference model that costs no
 * weight memory of its own. Call after building dst and before its first
 * graph (fw_graph_new) or fw_ctx_alloc_params, and do not run
 * fw_ctx_init_params on dst afterwards (it would overwrite src's weights).
 * src's parameters must be allocated. *n_shared (may be NULL) counts them.
 * The tensors of src must outlive dst's graphs. */
enum fw_status fw_rt_model_share_weights(struct fw_ctx *dst, const struct fw_ctx *src,
					 int *n_shared, struct fw_err *err);

/* Copies the values of each parameter of dst that src has (same name,
 * dtype and shape); both allocated. *n_copied (may be NULL) counts them. */
enum fw_status fw_rt_model_copy_weights(struct fw_ctx *dst, const struct fw_ctx *src,
					int *n_copied, struct fw_err *err);

/* fw_tensor_mark_written (fw/tensor.h) on every parameter of ctx whose
 * flags include all of need (0: every parameter), after a hook that may
 * have written their data (an adapter load or merge, a peft plugin's
 * after_backward). */
void fw_rt_mark_params_written(struct fw_ctx *ctx, uint32_t need);

/* Loads every parameter of params[0..n) by name from path (an fw HDF5 file:
 * a checkpoint or weights). With a peft plugin in plugins, trainable
 * parameters the file lacks (a new adapter's) keep their initialisation and
 * are counted in *n_new (when n_new is not NULL); so do task head
 * parameters (FW_FLAG_TASK_HEAD, which the arch sets: arch/encoder's
 * classifier and pooler) that a file without that head lacks. Tensors of the file that no parameter takes, other
 * than optimizer state, are refused (fw_rt_check_foreign_tensors).
 * Errors: fw_h5_load's (a missing tensor, a shape) and FW_ERR_INVALID. */
enum fw_status fw_rt_model_load_weights(const char *path, struct fw_tensor *const *params,
					int n, const struct fw_plugin_slots *plugins,
					bool base_only, int *n_new, const struct fw_rt_log *log,
					struct fw_err *err);

/* FW_ERR_INVALID, one line naming the first few and the plugins that own
 * them (the file's owners attribute; without one, the plugins the file's run
 * had that these plugins lack), for the tensors of path that are neither
 * in params[0..n) nor optimizer state: trained tensors a run would silently
 * drop. With base_only, logs (warning) which it drops and returns FW_OK.
 * plugins NULL: the arch's tensors only (an export). */
enum fw_status fw_rt_check_foreign_tensors(const char *path, struct fw_tensor *const *params,
					   int n, const struct fw_plugin_slots *plugins,
					   bool base_only, const struct fw_rt_log *log,
					   struct fw_err *err);

#ifdef __cplusplus
}
#endif
#endif
