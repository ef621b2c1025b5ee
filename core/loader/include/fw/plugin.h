/* fw/plugin.h - the one header a plugin author includes.
 *
 * A plugin is a shared object exporting exactly one function, declared here
 * (so a definition needs no prototype of its own, and is exported even
 * without FW_PLUGIN_EXPORT):
 *
 *     const struct fw_plugin *fw_plugin_entry(void);
 *
 * returning a const descriptor. fw reads the descriptor's first fields (size
 * and ABI tag) before anything else and rejects an incompatible plugin with
 * both versions named.
 *
 * A minimal optimizer plugin:
 *
 *     static const struct fw_option_def opts[] = {
 *             { "momentum", FW_OPT_FLOAT, "0.0", 0, 1, NULL, "momentum factor" },
 *     };
 *     static const struct fw_optim_i iface = { .size = sizeof(iface), .step = my_step };
 *     static const struct fw_plugin desc = {
 *             FW_PLUGIN_HEADER, .kind = FW_KIND_OPTIM, .name = "optim/mysgd",
 *             .version = "1.0", .options = opts, .n_options = 1, .iface = &iface,
 *     };
 *     FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void) { return &desc; }
 *
 * Versioning (as Redis modules and PostgreSQL's PG_MODULE_MAGIC do it):
 * - FW_ABI_MAJOR changes on any incompatible change; a plugin of another
 *   major is refused.
 * - FW_ABI_MINOR grows when members are appended to a size-stamped struct
 *   (struct fw_plugin, the kind interfaces, struct fw_host, fw_model,
 *   fw_attn_spec, fw_op_i). Each struct's size at each minor is frozen below
 *   (FW_*_SIZE_1_N: the end of the last member it had then). A plugin built
 *   for an older minor is accepted, and fw reads only the members its
 *   declared minor and size cover: later ones count as NULL. A plugin built
 *   for a newer minor is refused ("built for ABI 1.3, fw is 1.2").
 * - FW_ABI_FINGERPRINT covers only layouts that cannot grow: structs passed
 *   as arrays or embedded (fw_err, fw_option_def, fw_optim_group,
 *   fw_kv_cache, fw_param) and the members of fw_tensor. A struct that
 *   carries its size is not in it.
 * - A plugin reads a host-owned struct's later member only when the struct
 *   has it: FW_HAS(host, member) for struct fw_host, fw_model, fw_attn_spec.
 *
 * How plugins reach the engine: everything in the fw/ headers that plugin.h
 * includes (tensor.h, ops.h, op.h, graph.h, io.h, status.h) is libfw's public
 * API, and plugins link libfw (fw_add_plugin and pkg-config do), so a plugin
 * may call those functions directly, as it may call host->matmul. struct
 * fw_host is for what only the running host can do: routing through the
 * other plugins (linear, attention, embed), registration windows
 * (op_register), allocation a test can make fail (malloc), logging, init
 * recipes. A plugin never includes fw/loader.h (the host side of this
 * protocol: loading, slots, option parsing) or any header outside fw/ that
 * is not its own.
 *
 * Rules: plugins never free tensors the host owns, never start threads (use
 * host->parallel_for), never call exit(), and report errors through the
 * struct fw_err they are given. Registration (ops) is allowed only in init.
 */
#ifndef FW_PLUGIN_H
#define FW_PLUGIN_H

#include "fw/status.h"
#include "fw/tensor.h"
#include "fw/ops.h"
#include "fw/op.h"
#include "fw/graph.h"
#include "fw/io.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1.0: first release. 1.1: fw_model.segmented, positions, attn_bias.
 * 1.2: the fingerprint covers fixed layouts only (1.0 and 1.1 plugins carry
 * the older one, which fw still accepts); fw_plugin_entry is declared here;
 * fw_attn_spec.rope_scale_*; fw_peft_i.export_peft.
 * 1.3: fw_peft_i.check; fw_arch_i.hf_maps (struct fw_hf_map, with
 * tensor_part, import_options, export_keys); fw_attn_spec.window (a plugin
 * built before it ignores the field); virtual tokens (fw_model.n_virtual,
 * virtual_select, virtual_at; fw_peft_i.init_from_base).
 * 1.4: fw_model.enc_len, cross_out, cross_in, n_cross;
 * fw_host.lm_head_cross_entropy. 1.5: fw_model.n_prefix, fw_attn_spec.n_prefix;
 * fw_kv_cache.len may hold per-row slots (B, Tq), which the host gives only to
 * plugins built for 1.5 (fw_attn_cache_slots).
 * 1.6: fw_exec.grad_overwrite, read by ops that declare
 * FW_OPF_GRAD_OVERWRITE (op.h).
 * 1.7: fw_optim_i.step_fused with struct fw_optim_fused (the clip factor
 * folded into the update; the kept half copies of the parameters written by
 * the optimizer). */
#define FW_ABI_MAJOR 1   /* incompatible changes */
#define FW_ABI_MINOR 7   /* additions at the end of size-stamped structs */

/* Layouts that cannot grow without breaking plugins: a plugin built against
 * other ones is refused ("rebuild against this fw"). */
#define FW_ABI_FINGERPRINT \
	((uint32_t)((offsetof(struct fw_tensor, name) + FW_NAME_MAX) * 1000003u ^ \
		    sizeof(struct fw_err) * 10007u ^ sizeof(struct fw_option_def) * 1009u ^ \
		    sizeof(struct fw_optim_group) * 101u ^ sizeof(struct fw_kv_cache) * 13u ^ \
		    sizeof(union fw_param) * 7u ^ FW_MAX_DIMS ^ FW_MAX_SRC << 8 ^ \
		    FW_MAX_PARAMS << 16))

/* Where member m of struct type T ends: a struct's frozen size at a minor is
 * the end of the last member it had then. */
#define FW_SIZE_THROUGH(T, m) (offsetof(T, m) + sizeof(((T *)0)->m))
/* Whether *p (a struct starting with size_t size) has member m. */
#define FW_HAS(p, m) ((p)->size >= offsetof(__typeof__(*(p)), m) + sizeof((p)->m))

#define FW_PLUGIN_EXPORT __attribute__((visibility("default")))

enum fw_plugin_kind {
	FW_KIND_ARCH = 1,
	FW_KIND_ATTENTION,
	FW_KIND_PEFT,
	FW_KIND_OPTIM,
	FW_KIND_COUNT
};
const char *fw_plugin_kind_name(int kind);   /* "arch", ... */

/* --- options ------------------------------------------------------------------ */

enum fw_opt_type { FW_OPT_BOOL = 1, FW_OPT_INT, FW_OPT_FLOAT, FW_OPT_STRING, FW_OPT_CHOICE };

struct fw_option_def {
	const char *name;            /* "lora-r": lower case, dashes */
	enum fw_opt_type type;
	const char *def;             /* default as text; NULL = required */
	double min, max;             /* for INT/FLOAT; min > max = unbounded */
	const char *const *choices;  /* for CHOICE: NULL-terminated */
	const char *help;
};

/* Resolved option values, read by name. */
struct fw_options;
bool fw_opt_bool(const struct fw_options *o, const char *name);
int64_t fw_opt_int(const struct fw_options *o, const char *name);
double fw_opt_float(const struct fw_options *o, const char *name);
const char *fw_opt_str(const struct fw_options *o, const char *name);
/* All resolved values in declaration order (a plugin writing its own
 * settings into an adapter file): the count, each definition, and each
 * value as text ("" if unset). */
int fw_options_count(const struct fw_options *o);
const struct fw_option_def *fw_options_def(const struct fw_options *o, int i);
const char *fw_options_value(const struct fw_options *o, int i);
/* Name in names[0..n) closest to s by edit distance, or NULL if none is
 * close: for "did you mean" hints. */
const char *fw_nearest_name(const char *s, const char *const *names, int n);

struct fw_model;

/* --- kind-specific interfaces ---------------------------------------------------- */

/* Attention. q is (B, Tq, Hq, D); k and v are (B, Tk, Hkv, D) with Hq a
 * multiple of Hkv (MHA: equal, GQA: groups, MQA: Hkv = 1). The output is
 * (B, Tq, Hq, D). Position hooks apply inside the plugin, which may register
 * fused ops (flash, sparse). */
enum fw_mask_kind { FW_MASK_CAUSAL = 0, FW_MASK_BIDIRECTIONAL, FW_MASK_CROSS };
enum fw_pos_kind { FW_POS_NONE = 0, FW_POS_ROPE, FW_POS_ALIBI, FW_POS_RELATIVE };

/* Generation cache of one attention layer. The host sets max_len, and the
 * shared inputs len (i32 [1]: valid positions before this step) and mask
 * (f32 [max_len]: 0 up to and including the new positions, -inf after). The
 * attention plugin creates k and v itself, as persistent inputs of shape
 * (B, max_len, Hkv, D), writes the step's keys and values at len, and
 * attends over all max_len positions under the mask: O(max_len) a token.
 * Since ABI 1.5, per-row slots: len may instead be i32 (B, Tq), the cache
 * slot of each new token, which is also its position (RoPE, ALiBi, learned
 * positions); mask is then NULL. Query (b, t) sees the keys at slots
 * 0..len[b, t] of row b (causal by slot; a sliding window counts back from
 * len[b, t]); later slots hold stale values and must not be read. Rows are
 * at different positions, and Tq > 1 is a prefill chunk. The host gives
 * per-row slots only to plugins built for 1.5 or later (fw_attn_cache_slots
 * tells the two forms apart). */
struct fw_kv_cache {
	struct fw_tensor *k, *v;
	struct fw_tensor *len;
	struct fw_tensor *mask;
	int64_t max_len;
};

struct fw_attn_spec {
	size_t size;                 /* sizeof(struct fw_attn_spec) */
	const char *name;            /* "h.3.attn": prefix for any parameters */
	int layer;
	int n_head, n_kv_head, head_dim;
	enum fw_mask_kind mask;
	struct fw_tensor *bias;      /* (B, 1, Tq, Tk) additive 0 / -inf on top of mask:
					padding and document boundaries; NULL = none */
	enum fw_pos_kind pos;
	float rope_base;             /* 10000 */
	int rope_dim;                /* rotated dims per head; 0 = head_dim */
	bool rope_interleaved;       /* GPT-J pairs (true) or NeoX/Llama halves */
	struct fw_tensor *pos_bias;  /* FW_POS_RELATIVE: (Hq, Tq, Tk) additive bias */
	struct fw_kv_cache *cache;   /* non-NULL while generating */
	float dropout;               /* on attention probabilities, training only */
	uint64_t seed;
	float scale;                 /* 0 = 1/sqrt(head_dim) */
	/* Since ABI 1.2: read only when FW_HAS(spec, ...). FW_POS_ROPE frequency
	 * scaling as Hugging Face's rope_scaling {"rope_type": "llama3"}:
	 * rope_scale_factor 0 = none; else factor, low_freq_factor,
	 * high_freq_factor, original_max_position_embeddings. RoPE positions are
	 * m->positions when the arch made them (SFT rows), else 0..T-1, and the
	 * cache length onwards while generating. */
	float rope_scale_factor, rope_scale_low_freq, rope_scale_high_freq;
	int rope_scale_orig_max_pos;
	/* Read only when FW_HAS(spec, window). FW_MASK_CAUSAL with a sliding
	 * window (Mistral's sliding_window): query position i sees keys j with
	 * i - window < j <= i, while generating too; 0 = none. A plugin that
	 * cannot honour it fails attend (FW_ERR_INVALID, one line). */
	int64_t window;
	/* Since ABI 1.5 (FW_HAS(spec, n_prefix)); the host sets it. Key/value
	 * rows the peft plugin put in front of k and v (prefix tuning), which
	 * stand as past keys, as Hugging Face takes PEFT's past_key_values: the
	 * queries and the other keys are at positions n_prefix.. (fw_attn_rope
	 * rotates them from there and leaves the prefix keys as they are), and
	 * key j at position j for ALiBi (the causal alignment, i + Tk - Tq). */
	int64_t n_prefix;
};

struct fw_attention_i {
	size_t size;
	/* Required. NULL with err set (FW_ERR_UNSUPPORTED) for a spec field the
	 * plugin cannot honour; spec->cache: see struct fw_kv_cache. */
	struct fw_tensor *(*attend)(void *state, struct fw_model *m,
				    const struct fw_attn_spec *spec, struct fw_tensor *q,
				    struct fw_tensor *k, struct fw_tensor *v, struct fw_err *err);
};

/* What every attention plugin does with a spec's position and cache fields,
 * in libfw so that each exists once (ops: fw_rope, fw_kv_write in fw/ops.h). */

/* With spec->pos == FW_POS_ROPE: checks the rotary dim (even, positive, at
 * most head_dim), rope_base, the Llama-3 scaling fields, and that k has as
 * many positions as q (plus spec->n_prefix) unless generating. FW_OK, or FW_ERR_INVALID (status
 * `prepended` for the last rule) with "<plugin>: <spec name>: ..." in err. */
enum fw_status fw_attn_check_rope(const struct fw_attn_spec *spec, const struct fw_tensor *q,
				  const struct fw_tensor *k, const char *plugin,
				  enum fw_status prepended, struct fw_err *err);
/* fw_rope of x (B, T, H, D) as spec asks: positions from the cache length
 * while generating, else m->positions when the arch made them, else 0..T-1;
 * after spec->n_prefix = P prefix keys, the queries (m->seq_len rows) at
 * P..P+T-1 and keys (P + m->seq_len rows) the same but the first P rows,
 * which stay unrotated. */
struct fw_tensor *fw_attn_rope(struct fw_model *m, const struct fw_attn_spec *spec,
			       struct fw_tensor *x);
/* spec->cache->len when it holds per-row slots (B, Tq) (ABI 1.5), else NULL. */
struct fw_tensor *fw_attn_cache_slots(const struct fw_attn_spec *spec);
/* Generation: writes x (B, Tq, H, D) into *slot (&spec->cache->k or ->v) at
 * the cache length with fw_kv_write and returns the whole cache. Creates
 * *slot on first use: the input "kv_cache.<spec name>.<what>" of shape
 * (B, max_len, H, D) in m->ctx, in the ctx's autocast dtype (f32, or bf16/f16
 * under --bf16/--fp16; x is cast to it). */
struct fw_tensor *fw_attn_cache_write(struct fw_model *m, const struct fw_attn_spec *spec,
				      struct fw_tensor **slot, struct fw_tensor *x,
				      const char *what);

/* Arch: builds the model into m->ctx. Every parameter gets a stable name
 * ("h.0.attn.c_attn.weight") used by checkpoints, adapters and import. */
/* CLASSIFY: one label per sequence, logits (B, 1, L) against targets[:, 0];
 * TOKEN_CLASSIFY (appended in 1.2): one per position, logits (B, T, L). */
enum fw_head_kind { FW_HEAD_LM = 0, FW_HEAD_MLM, FW_HEAD_CLASSIFY, FW_HEAD_SEQ2SEQ,
		    FW_HEAD_TOKEN_CLASSIFY };

struct fw_model {
	size_t size;                 /* sizeof(struct fw_model) */
	struct fw_ctx *ctx;
	const struct fw_host *host;
	const struct fw_options *opts;   /* the arch plugin's resolved options */
	int64_t batch, seq_len;      /* micro-batch shape */
	enum fw_head_kind head;
	bool training;
	uint64_t seed;
	/* Inputs the arch creates: tokens/targets (B, T) i32, loss_mask (B, T)
	 * f32 or NULL, enc_tokens for encoder-decoder. */
	struct fw_tensor *tokens, *targets, *loss_mask, *enc_tokens;
	/* Outputs: loss [1] and logits (B, T, V). */
	struct fw_tensor *loss, *logits;
	struct fw_kv_cache *caches;  /* one per attention layer while generating */
	int n_caches;
	void *host_private;
	/* The host sets segmented before build when a row holds several
	 * sequences or padding (SFT batches). The arch then creates positions
	 * (B, T) i32 (each token's place in its own sequence) and attn_bias
	 * (B, 1, T, T) f32 (0 where a query may see a key of the same sequence,
	 * -inf elsewhere), which the host fills per batch, and passes attn_bias
	 * to attention as fw_attn_spec.bias. */
	bool segmented;
	struct fw_tensor *positions, *attn_bias;
	/* Since ABI 1.3: virtual tokens (prompt tuning, P-tuning), as PEFT
	 * prepends them: host->embed may return (B, P + T, C) for word
	 * embeddings (B, T, C), the P virtual rows first; the host sets
	 * n_virtual = P. An arch that calls host->embed on its word embeddings
	 * then runs the blocks over P + T rows: learned positions 0..P+T-1 (the
	 * real tokens at P.., under segmented rows P + m->positions), the causal
	 * mask over all of them, attn_bias widened so that every query sees the
	 * virtual rows, and drops the P rows before the head, so logits, targets
	 * and loss_mask stay (B, T). While decoding (T = 1) host->embed keeps
	 * the shape; the peft plugin creates virtual_select (1, P + 1) f32, which
	 * the host fills each step: one-hot column p for virtual token p (the
	 * token input is then ignored), column P for a real token. The host runs
	 * the P virtual steps first, at cache positions 0..P-1.
	 * virtual_at (set by the peft plugin; 0 = in front, as above) puts the
	 * virtual rows before real token K = virtual_at instead (P-tuning's
	 * template): rows [K, K + P) of P + T. The arch then keeps rows [0, K-1)
	 * and [K-1+P, P+T) for the head (the last virtual row predicts token K),
	 * and refuses segmented rows; the host runs the virtual steps after the
	 * first K prompt tokens. */
	int64_t n_virtual;
	struct fw_tensor *virtual_select;
	int64_t virtual_at;
	/* Since ABI 1.4 (read only when FW_HAS(m, member)). Encoder-decoder
	 * generation: the host sets enc_len, the encoder positions of a decoding model (m->caches set). The arch
	 * then builds, besides the one-token decoder step, the encoder pass over
	 * enc_tokens (B, enc_len) and gives n_cross pairs: cross_out[i], what
	 * the decoder needs of the encoder (each layer's cross-attention K and
	 * V), and cross_in[i], an input of the same shape the decoder step reads
	 * instead. The host runs a graph of cross_out once per source sequence
	 * and copies each into its cross_in; the step's graph (logits) never
	 * recomputes the encoder. Arrays in m->ctx's memory (host->ctx_alloc). */
	int64_t enc_len;
	struct fw_tensor **cross_out, **cross_in;
	int n_cross;
	/* Since ABI 1.5 (FW_HAS(m, n_prefix)). Key/value rows the peft plugin
	 * puts in front of every self-attention (prefix tuning), set from its
	 * wrap_embed, before the arch makes positions: as PEFT passes them as
	 * past_key_values, the real tokens stand at positions n_prefix.., so an
	 * arch's learned positions start there (n_prefix + T must fit). While
	 * decoding, the caches hold the prefix in their first n_prefix rows.
	 * An arch that makes its own position bias (T5's relative bias) builds
	 * a prefixed attention's bias over n_prefix + Tk keys, the prefix at key
	 * positions 0..n_prefix-1. */
	int64_t n_prefix;
};

struct fw_arch_i {
	size_t size;
	/* Required. Builds inputs, parameters and the forward graph up to
	 * m->loss and m->logits. With m->caches set, builds the incremental
	 * decoding graph (B = m->batch rows, all at one position, T = 1,
	 * position caches[0].len, attention given spec.cache =
	 * &m->caches[layer]; since 1.5, with per-row slots in caches[0].len
	 * (B, T), T tokens a row at positions len[b, t]). */
	enum fw_status (*build)(void *state, struct fw_model *m, struct fw_err *err);
	/* Optional: number of attention layers, for cache allocation; NULL or 0
	 * = the arch cannot generate. */
	int (*n_layers)(void *state, const struct fw_model *m);
	/* Since ABI 1.3. The Hugging Face transformers models this arch reads
	 * and writes (fwrun import / export), one map per model_type,
	 * NULL-terminated; NULL: none. */
	const struct fw_hf_map *const *hf_maps;
};

/* One config.json key that is an arch option (its value as the option's
 * text: integers and numbers as written, booleans true/false). */
struct fw_hf_key {
	const char *key;             /* "n_layer" */
	const char *option;          /* "n-layer" */
};

/* One config.json key export writes as it is. */
struct fw_hf_const {
	const char *key;             /* "activation_function" */
	const char *json;            /* its value as JSON text: "\"gelu_new\"", "0.0" */
};

/* How an arch's model is a Hugging Face transformers model of one
 * model_type (an encoder's "bert", a decoder's "gpt2"). Size-stamped: later
 * minors may append members, read only when size covers them. */
struct fw_hf_map {
	size_t size;
	const char *model_type;      /* config.json "model_type" */
	/* "architectures": ["GPT2LMHeadModel"] on export; import prefers the
	 * map of model_type whose architecture is config.json's
	 * architectures[0] (one map a class), else the first of model_type. */
	const char *architecture;
	/* Options from config.json, in order; a key listed again for the same
	 * option is an older alias (n_ctx after n_positions): the first
	 * present is read, and export writes every one. */
	const struct fw_hf_key *keys;
	int n_keys;
	const struct fw_hf_const *consts;
	int n_consts;
	/* NULL-terminated prefixes a model.safetensors key may carry
	 * ("transformer."); export writes keys without one. */
	const char *const *key_prefixes;
	/* NULL-terminated ends of model.safetensors keys that are buffers, not
	 * weights (GPT-2's "attn.bias" mask): import skips them. */
	const char *const *buffer_suffixes;
	/* Checks the config.json at path as a model this arch computes: it
	 * parses, every value the arch reads has its type and range, and
	 * settings the arch cannot compute are refused; one line naming path,
	 * key and value. NULL: only the keys' types and options' ranges. */
	enum fw_status (*check_config)(const char *path, struct fw_err *err);
	/* Whether a model with these (resolved) options is this model_type:
	 * export picks the first map that says yes and whose parameters with
	 * a key (tensor_key, tensor_part) the file has all of. NULL: always. */
	bool (*describes)(const struct fw_options *opts);
	/* The model.safetensors key of the arch's parameter param ("h.0.attn.
	 * c_attn.weight"), and *transpose when Hugging Face stores it as
	 * (in, out) where the arch has (out, in) (GPT-2's Conv1D). false: the
	 * parameter has no Hugging Face counterpart. */
	bool (*tensor_key)(const struct fw_options *opts, const char *param, char *key,
			   size_t len, bool *transpose);
	/* Optional, read only when size covers them (FW_HAS). A parameter that
	 * Hugging Face stores as several tensors stacked along dim 0 (Llama's
	 * q_proj, k_proj, v_proj of a fused c_attn): the key of part `part` and
	 * its rows; false past the last part, and for a parameter of one
	 * tensor (tensor_key's). */
	bool (*tensor_part)(const struct fw_options *opts, const char *param, int part,
			    char *key, size_t len, int64_t *rows);
	/* Options that are not one config.json key each (Llama's rope_scaling,
	 * its fixed RMSNorm and SwiGLU, defaults that differ from the arch's):
	 * "option = value" lines into ini (len bytes) for the config.json at
	 * path that check_config accepted; import applies those the keys did
	 * not set. false: ini too short. */
	bool (*import_options)(const char *path, char *ini, size_t len);
	/* The config.json keys that are not one option each, for export: a JSON
	 * object's text into json (len bytes), merged into the file. false:
	 * json too short. */
	bool (*export_keys)(const struct fw_options *opts, char *json, size_t len);
};

/* PEFT: receives hook points while the arch builds, then owns its tensors.
 * Every member is optional (NULL = nothing to do / not supported). */
struct fw_peft_i {
	size_t size;
	/* Each named linear: return the wrapped y (LoRA, IA3, QLoRA), or NULL
	 * with err clear to leave it plain. */
	struct fw_tensor *(*wrap_linear)(void *state, struct fw_model *m, const char *name,
					 struct fw_tensor *x, struct fw_tensor *w,
					 struct fw_tensor *bias, struct fw_err *err);
	/* Input embeddings (B, T, C): prompt tuning / P-tuning prepend tokens. */
	struct fw_tensor *(*wrap_embed)(void *state, struct fw_model *m, struct fw_tensor *x,
					struct fw_err *err);
	/* Each attention's K/V (prefix tuning prepends per-layer prefixes). */
	enum fw_status (*wrap_kv)(void *state, struct fw_model *m,
				  const struct fw_attn_spec *spec, struct fw_tensor **k,
				  struct fw_tensor **v, struct fw_err *err);
	/* After the arch built: freeze base parameters (before allocation). */
	enum fw_status (*freeze)(void *state, struct fw_model *m, struct fw_err *err);
	/* Optional extra loss term added to m->loss (AdaLoRA orthogonality). */
	struct fw_tensor *(*extra_loss)(void *state, struct fw_model *m, struct fw_err *err);
	/* Per optimizer step, after backward (AdaLoRA rank reallocation). */
	enum fw_status (*after_backward)(void *state, struct fw_model *m, int64_t step,
					 struct fw_err *err);
	/* Adapter-only files and merging into the base weights. */
	enum fw_status (*save)(void *state, struct fw_model *m, const char *path,
			       struct fw_err *err);
	enum fw_status (*load)(void *state, struct fw_model *m, const char *path,
			       struct fw_err *err);
	enum fw_status (*merge)(void *state, struct fw_model *m, struct fw_err *err);
	enum fw_status (*unmerge)(void *state, struct fw_model *m, struct fw_err *err);
	/* Since ABI 1.2. Writes the adapter file `adapter` (one of this plugin's
	 * save) in Hugging Face PEFT's layout: dir/adapter_config.json and
	 * dir/adapter_model.safetensors with PEFT's key names; base_model (may be
	 * NULL) fills base_model_name_or_path. Needs no model and no init: fwrun
	 * export-adapter loads the plugin the file names and calls this alone. */
	enum fw_status (*export_peft)(const struct fw_host *host, const char *adapter,
				      const char *dir, const char *base_model,
				      struct fw_err *err);
	/* Since ABI 1.3. Whether the adapter file `adapter` (one of this
	 * plugin's save) was made for model m's base (its tensors and weights),
	 * as load would check it, changing nothing: FW_OK or load's error. The
	 * host checks every adapter a run lists, not only the one it loads, and
	 * the options of the file may differ from this instance's. NULL: the
	 * host checks only that the file is an adapter of this plugin. */
	enum fw_status (*check)(void *state, struct fw_model *m, const char *adapter,
				struct fw_err *err);
	/* Since ABI 1.3. Initialisation that reads the base weights (prompt
	 * tuning's text and sample_vocab init copy word embeddings): called once
	 * the base weights are in place, only for a new adapter (not one loaded
	 * from an adapter file or a checkpoint). */
	enum fw_status (*init_from_base)(void *state, struct fw_model *m, struct fw_err *err);
};

/* Optimizer: the host allocates n_state f32 tensors per parameter (named
 * "optim.<param>.<state_names[i]>", checkpointed, zero at the start of a
 * run, restored on resume) and groups parameters: group 0 decays, group 1
 * (1-D tensors: biases, norm gains) does not. */
struct fw_optim_group {
	float lr, weight_decay;
	int n_params;
	struct fw_tensor **params;   /* with ->grad */
	float ***state;              /* state[i][s]: param i's state tensor s */
};

/* Since 1.7: what the host gives step_fused. Host-owned and size-stamped:
 * FW_HAS(f, member) before reading a later member. */
struct fw_optim_fused {
	size_t size;
	int64_t step;                /* as step's */
	/* Each gradient is read as g * grad_scale rounded to f32 (clipping;
	 * 1: as is), exactly what a scaling pass would have stored. The
	 * gradients themselves are left unchanged. */
	float grad_scale;
	enum fw_dtype half_dtype;    /* of the copies in half: FW_BF16 or FW_F16 */
	/* half[group][i]: the kept half copy of groups[group].params[i], which
	 * the step overwrites with its new value exactly as
	 * fw_convert(copy, half_dtype, p->data, FW_F32, n) would (call it on
	 * each block just updated); NULL: none (the host casts). half itself
	 * is NULL in an f32 run. */
	void *const *const *half;
};

/* For step_fused: block(arg, at, g, n) over elements [begin, end) of a
 * parameter with data p and gradient grad, in blocks that stay in L1. g is
 * grad + at, or, when grad_scale is not 1, grad times grad_scale rounded
 * into a buffer first (what a scaling pass stores: no FMA contracts the
 * product into the update). After each block, its part of half (NULL:
 * none) is written from p with fw_convert. */
static inline void fw_optim_fused_range(const float *grad, float grad_scale, const float *p,
					void *half, enum fw_dtype half_dtype, int64_t begin,
					int64_t end,
					void (*block)(void *arg, int64_t at, const float *g,
						      int64_t n),
					void *arg)
{
	float scaled[2048];
	const int64_t block_n = (int64_t)(sizeof(scaled) / sizeof(scaled[0]));
	for (int64_t at = begin; at < end; at += block_n) {
		int64_t n = end - at < block_n ? end - at : block_n;
		const float *g = grad + at;
		if (grad_scale != 1.0f) {
			for (int64_t i = 0; i < n; i++)
				scaled[i] = g[i] * grad_scale;
			g = scaled;
		}
		block(arg, at, g, n);
		if (half)
			fw_convert((char *)half + at * (int64_t)fw_dtype_size(half_dtype), half_dtype,
				   p + at, FW_F32, n);
	}
}

struct fw_optim_i {
	size_t size;
	int n_state;                 /* >= 0 */
	const char *const *state_names;  /* required when n_state > 0 */
	/* Required. One update; step counts from 1 (a resumed run continues
	 * the count). Gradients are already unscaled and clipped by the host. */
	enum fw_status (*step)(void *state, const struct fw_optim_group *groups, int n_groups,
			       int64_t step, struct fw_err *err);
	/* Since 1.7, optional: the same update reading the gradients times
	 * f->grad_scale and writing every non-NULL f->half copy; the host calls
	 * it instead of step. Without it the host scales the gradients in a
	 * pass of its own and casts the copies in the next forward. */
	enum fw_status (*step_fused)(void *state, const struct fw_optim_group *groups,
				     int n_groups, const struct fw_optim_fused *f,
				     struct fw_err *err);
};

/* --- host services --------------------------------------------------------------- */

struct fw_model;

enum fw_log_level { FW_LOG_DEBUG, FW_LOG_INFO, FW_LOG_WARN, FW_LOG_ERROR };

struct fw_host {
	size_t size;                 /* sizeof(struct fw_host) of the running fw:
					FW_HAS(host, member) before a later member */
	uint16_t abi_major, abi_minor;

	void *(*malloc)(size_t size);
	void (*free)(void *ptr);
	enum fw_status (*errorf)(struct fw_err *err, enum fw_status s, const char *fmt, ...)
		__attribute__((format(printf, 3, 4)));
	void (*log)(enum fw_log_level level, const char *fmt, ...)
		__attribute__((format(printf, 2, 3)));

	/* Ops and threads (see fw/op.h). op_register only during init. */
	int (*op_register)(const struct fw_op_i *op, struct fw_err *err);
	void (*parallel_for)(int64_t n, fw_range_fn fn, void *arg);

	/* Graph construction (see fw/ops.h and fw/graph.h). */
	struct fw_tensor *(*param)(struct fw_ctx *ctx, const char *name, enum fw_dtype dt,
				   int ndim, const int64_t *shape, bool trainable);
	struct fw_tensor *(*input)(struct fw_ctx *ctx, const char *name, enum fw_dtype dt,
				   int ndim, const int64_t *shape);
	struct fw_tensor *(*op)(struct fw_ctx *ctx, int op, struct fw_tensor **src, int n_src,
				const union fw_param *params, int n_params);
	struct fw_tensor *(*matmul)(struct fw_ctx *ctx, struct fw_tensor *a, struct fw_tensor *b,
				    bool trans_a, bool trans_b);
	struct fw_tensor *(*add)(struct fw_ctx *ctx, struct fw_tensor *a, struct fw_tensor *b);
	struct fw_tensor *(*mul)(struct fw_ctx *ctx, struct fw_tensor *a, struct fw_tensor *b);
	struct fw_tensor *(*scale)(struct fw_ctx *ctx, struct fw_tensor *a, float s);
	struct fw_tensor *(*reshape)(struct fw_ctx *ctx, struct fw_tensor *x, int ndim,
				     const int64_t *shape);
	struct fw_tensor *(*permute)(struct fw_ctx *ctx, struct fw_tensor *x, const int *perm);
	struct fw_tensor *(*slice)(struct fw_ctx *ctx, struct fw_tensor *x, int axis,
				   int64_t start, int64_t length);
	struct fw_tensor *(*cont)(struct fw_ctx *ctx, struct fw_tensor *x);
	struct fw_tensor *(*concat)(struct fw_ctx *ctx, struct fw_tensor *a, struct fw_tensor *b,
				    int axis);
	struct fw_tensor *(*softmax)(struct fw_ctx *ctx, struct fw_tensor *x,
				     struct fw_tensor *bias, bool causal, float scale);
	struct fw_tensor *(*dropout)(struct fw_ctx *ctx, struct fw_tensor *x, float p,
				     uint64_t seed);
	struct fw_tensor *(*embedding)(struct fw_ctx *ctx, struct fw_tensor *table,
				       struct fw_tensor *ids);
	struct fw_tensor *(*layernorm)(struct fw_ctx *ctx, struct fw_tensor *x,
				       struct fw_tensor *w, struct fw_tensor *b, float eps);
	struct fw_tensor *(*rmsnorm)(struct fw_ctx *ctx, struct fw_tensor *x,
				     struct fw_tensor *w, float eps);
	struct fw_tensor *(*gelu)(struct fw_ctx *ctx, struct fw_tensor *x, enum fw_gelu_form f);
	struct fw_tensor *(*silu)(struct fw_ctx *ctx, struct fw_tensor *x);
	struct fw_tensor *(*relu)(struct fw_ctx *ctx, struct fw_tensor *x);
	struct fw_tensor *(*tanh)(struct fw_ctx *ctx, struct fw_tensor *x);
	struct fw_tensor *(*cross_entropy)(struct fw_ctx *ctx, struct fw_tensor *logits,
					   struct fw_tensor *targets, struct fw_tensor *mask,
					   int ignore_index);
	struct fw_tensor *(*sum)(struct fw_ctx *ctx, struct fw_tensor *x, int axis,
				 bool keepdim);
	void (*checkpoint_begin)(struct fw_ctx *ctx);
	void (*checkpoint_end)(struct fw_ctx *ctx);
	struct fw_err *(*ctx_err)(struct fw_ctx *ctx);
	void *(*ctx_alloc)(struct fw_ctx *ctx, size_t bytes, enum fw_mem_category cat);

	/* Routing through the other loaded plugins while an arch builds: a named
	 * linear layer (peft may wrap it), attention (the attention plugin), the
	 * input embeddings (peft may prepend virtual tokens). */
	struct fw_tensor *(*linear)(struct fw_model *m, const char *name, struct fw_tensor *x,
				    struct fw_tensor *w, struct fw_tensor *bias);
	struct fw_tensor *(*attention)(struct fw_model *m, const struct fw_attn_spec *spec,
				       struct fw_tensor *q, struct fw_tensor *k,
				       struct fw_tensor *v);
	struct fw_tensor *(*embed)(struct fw_model *m, struct fw_tensor *x);
	/* Deterministic parameter init helpers (seeded by the run). */
	void (*init_normal)(struct fw_model *m, struct fw_tensor *p, float std);
	void (*init_const)(struct fw_model *m, struct fw_tensor *p, float value);
	/* Since 1.4 (FW_HAS(host, lm_head_cross_entropy)): fw_lm_head_cross_entropy,
	 * the head's product and the loss in row chunks, cast under autocast. */
	struct fw_tensor *(*lm_head_cross_entropy)(struct fw_ctx *ctx, struct fw_tensor *x,
						   struct fw_tensor *w, struct fw_tensor *targets,
						   struct fw_tensor *mask, int ignore_index,
						   int chunk_rows);
	/* Append new members here only. */
};

/* --- the descriptor ------------------------------------------------------------- */

struct fw_plugin {
	/* These first fields keep their layout in every ABI version. */
	uint32_t size;               /* sizeof(struct fw_plugin) */
	uint16_t abi_major, abi_minor;
	uint32_t abi_fingerprint;

	enum fw_plugin_kind kind;
	const char *name;            /* "KIND/NAME", e.g. "attention/flash" */
	const char *version;
	const char *description;
	const struct fw_option_def *options;
	int n_options;
	const void *iface;           /* struct fw_arch_i, fw_attention_i, ... */
	/* Optional: per-run state; options are resolved. FW_OK or err set. */
	enum fw_status (*init)(const struct fw_host *host, const struct fw_options *opts,
			       void **state, struct fw_err *err);
	void (*fini)(void *state);
};

/* Frozen sizes: each struct's size at each minor, never changed once
 * released. Append a line when a minor appends members. */
#define FW_PLUGIN_SIZE_1_0      FW_SIZE_THROUGH(struct fw_plugin, fini)
#define FW_ARCH_I_SIZE_1_0      FW_SIZE_THROUGH(struct fw_arch_i, n_layers)
#define FW_ARCH_I_SIZE_1_3      FW_SIZE_THROUGH(struct fw_arch_i, hf_maps)
#define FW_ATTENTION_I_SIZE_1_0 FW_SIZE_THROUGH(struct fw_attention_i, attend)
#define FW_PEFT_I_SIZE_1_0      FW_SIZE_THROUGH(struct fw_peft_i, unmerge)
#define FW_PEFT_I_SIZE_1_2      FW_SIZE_THROUGH(struct fw_peft_i, export_peft)
#define FW_PEFT_I_SIZE_1_3      FW_SIZE_THROUGH(struct fw_peft_i, init_from_base)
#define FW_OPTIM_I_SIZE_1_0     FW_SIZE_THROUGH(struct fw_optim_i, step)
#define FW_OPTIM_I_SIZE_1_7     FW_SIZE_THROUGH(struct fw_optim_i, step_fused)
#define FW_HOST_SIZE_1_0        FW_SIZE_THROUGH(struct fw_host, init_const)
#define FW_HOST_SIZE_1_4        FW_SIZE_THROUGH(struct fw_host, lm_head_cross_entropy)
#define FW_MODEL_SIZE_1_0       FW_SIZE_THROUGH(struct fw_model, host_private)
#define FW_MODEL_SIZE_1_1       FW_SIZE_THROUGH(struct fw_model, attn_bias)
#define FW_MODEL_SIZE_1_3       FW_SIZE_THROUGH(struct fw_model, virtual_at)
#define FW_MODEL_SIZE_1_4       FW_SIZE_THROUGH(struct fw_model, n_cross)
#define FW_MODEL_SIZE_1_5       FW_SIZE_THROUGH(struct fw_model, n_prefix)
#define FW_ATTN_SPEC_SIZE_1_0   FW_SIZE_THROUGH(struct fw_attn_spec, scale)
#define FW_ATTN_SPEC_SIZE_1_2   FW_SIZE_THROUGH(struct fw_attn_spec, rope_scale_orig_max_pos)
#define FW_ATTN_SPEC_SIZE_1_5   FW_SIZE_THROUGH(struct fw_attn_spec, n_prefix)
#define FW_OP_I_SIZE_1_0        FW_SIZE_THROUGH(struct fw_op_i, saved)

#define FW_PLUGIN_HEADER \
	.size = sizeof(struct fw_plugin), .abi_major = FW_ABI_MAJOR, \
	.abi_minor = FW_ABI_MINOR, .abi_fingerprint = FW_ABI_FINGERPRINT

/* The one symbol a plugin exports; each plugin defines it. Declared here
 * with default visibility, so it is exported under -fvisibility=hidden and
 * -Wmissing-prototypes has nothing to say. */
FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void);
typedef const struct fw_plugin *(*fw_plugin_entry_fn)(void);
#define FW_PLUGIN_ENTRY_SYMBOL "fw_plugin_entry"

#ifdef __cplusplus
}
#endif
#endif
