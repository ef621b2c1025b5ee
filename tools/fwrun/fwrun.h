/* fwrun.h - shared between the fwrun command's files. */
#ifndef FWRUN_H
#define FWRUN_H

#include <stdio.h>

#include "fw/fw.h"
#include "fw/runtime.h"

/* Exit codes; exit_code() (report.c) is the one map from a status to them. */
enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

/* --- configuration: run options + plugins + their options ------------------------ */

struct config {
	struct fw_options *run;           /* fwrun's own options (Megatron names) */
	struct fw_loaded *plugin[FW_KIND_COUNT];
	char *config_path;
	char *taken;                      /* what --load's checkpoint filled in, or NULL */
	bool *user_set;                   /* per run option: on the command line or in --config */
	long vocab_auto;                  /* the vocab-size --tokenizer=byte set, or 0 */
};

/* Parses argv (after the subcommand) and an optional --config INI file,
 * loads the plugins named by --plugins, and resolves every option. With
 * need_plugins, an arch plugin is required. Positional arguments are
 * returned in pos[] (at most max_pos). For cmd (train, eval, generate, plan;
 * NULL for help) a checkpoint named by --load fills what the user left out,
 * and one stderr line says what: its plugins (eval and generate without the
 * optimizer), the plugins' options, and its batch shape and data layout
 * (micro-batch-size, seq-length, packing, chat-template, too-long,
 * calculate-per-token-loss), or, for a resumed training run (no
 * --finetune), every option but load, finetune, overwrite, base-only and
 * the adapter options. --tokenizer=byte sets vocab-size unless it is set
 * (to its 257 tokens and chatml's two; session_open adds those the model's
 * task adds, once the model says which task it has). */
enum fw_status config_load(struct config *c, const char *cmd, int argc, char **argv,
			   bool need_plugins, char **pos, int max_pos, int *n_pos,
			   struct fw_err *err);
void config_free(struct config *c);
/* Whether the user set fwrun option name, on the command line or in the
 * --config file (not a checkpoint's value, not a default). */
bool config_user_set(const struct config *c, const char *name);
/* Says on stderr what config_load took from --load's checkpoint, if anything;
 * called once the command is set up, so that an error stays one line. */
void config_report(const struct config *c);
/* Whether option name (of fwrun, or of the plugin whose options are o) does
 * something in cmd (train, eval, generate; plan takes train's). */
bool option_applies(const struct config *c, const struct fw_options *o, const char *name,
		    const char *cmd);
/* One warning line for each option of argv, or of the --config file (unless
 * at its default there), that does nothing in cmd (--temperature in train),
 * or nothing without other options (--eval-interval without --valid-data). */
void warn_unused_options(struct config *c, const char *cmd, int argc, char **argv);
/* 'fwrun CMD --help': usage, then the options of fwrun and of the plugins
 * named in argv that do something in cmd. */
int command_help(const char *cmd, const char *usage, int argc, char **argv);
/* Whether argv asks for help (--help or -h anywhere). */
bool wants_help(int argc, char **argv);
/* Writes the fully resolved configuration as INI text (malloc'd). */
char *config_dump(const struct config *c);
const struct fw_option_def *run_option_defs(int *n);
/* The default text of option name in a configuration's section ("" or "run":
 * fwrun's; else the loaded plugin of that name in c, which may be NULL);
 * NULL when unknown or required. */
const char *config_option_default(const struct config *c, const char *section, const char *name);

/* --- tokenizer (tok.c) ------------------------------------------------------------- */

#define TOKENIZER_ATTR FW_CKPT_ATTR_TOKENIZER   /* the checkpoint schema's */
/* generation_config.json as imported (fwrun generate's defaults) */
#define GENCONFIG_ATTR "generation_config"
/* The checkpoint's stored tokenizer (ckpt may be NULL or a file without
 * one), else the one --tokenizer names; NULL with err clear when neither
 * gives one. Both given and different is an error. */
struct fw_tokenizer *run_tokenizer(const struct fw_options *run, const char *ckpt,
				   struct fw_err *err);

/* --load=DIR means the newest ckpt-*.h5 in it; a file is taken as it is. A
 * directory holding checkpoints of different configurations is refused. */
enum fw_status resolve_load(const char *arg, char *out, size_t len, struct fw_err *err);
/* The step of a complete checkpoint's file name, exactly ckpt-<digits>.h5; -1
 * for anything else. */
long long ckpt_step(const char *name);

/* --- what checkpoints and run directories belong to (runs.c) ------------------------ */

/* Whether two resolved configurations (config_dump's INI) train the same run:
 * equal but for where a run writes, how often it logs or evaluates, how long
 * it goes on, and other commands' options. An option only one side lists (one
 * added to fw after the other was written) counts as equal when it holds its
 * default: fwrun's own options always, a plugin's when c has that plugin
 * loaded (c may be NULL). If not, why names the first option that differs,
 * with a_name and b_name for the two sides. */
bool config_same_run(const char *a, const char *b, const char *a_name, const char *b_name,
		     const struct config *c, char *why, size_t len);
/* INVALID if dir's checkpoints were written by different configurations. */
enum fw_status check_dir_checkpoints(const char *dir, struct fw_err *err);
/* A directory's newest adapter-<digits>.h5 (a file is taken as it is). */
enum fw_status resolve_adapter(const char *arg, char *out, size_t len, struct fw_err *err);
/* The arch plugin of an fw file: its run configuration's, else its
 * fw_arch attribute (an imported file); FORMAT when it names none. */
enum fw_status file_arch_name(const char *path, char *out, size_t len, struct fw_err *err);
/* --bf16/--fp16 into the autocast dtype (FW_F32 without either); INVALID
 * when both are given. */
enum fw_status precision_choice(bool bf16, bool fp16, enum fw_dtype *dt, struct fw_err *err);
/* config_dump's INI text without the peft plugin's section and plugins
 * entry (malloc'd; NULL when out of memory). */
char *config_without_peft(const char *text);

/* --- subcommands ------------------------------------------------------------------- */

int cmd_list(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_import(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_export(int argc, char **argv);
/* fwrun export-adapter --base (hf.c): DIR/adapter_model.safetensors's keys
 * renamed to the modules of base's Hugging Face class (its arch's map, the
 * class fwrun export writes for base): RoBERTa's roberta.* and lm_head.*. */
enum fw_status adapter_hf_keys(const char *base, const char *dir, struct fw_err *err);
int cmd_tokenize(int argc, char **argv);
int cmd_sweep(int argc, char **argv);      /* sweep.c */
int cmd_report(int argc, char **argv);     /* report_sweep.c */

/* seq2seq_gen.c: whether the arch of slots is an encoder-decoder (its
 * model has enc_tokens), and its decoding model for fwrun generate: the
 * prompt is the source (its ids and </s> with a tokenizer), the target is
 * generated greedily, sampled or by --num-beams (fw/runtime/seq2seq.h). */
bool seq2seq_arch(const struct fw_plugin_slots *slots);
struct s2s_gen {
	struct fw_rt_s2s_decoder d;
	struct fw_rt_s2s_opts o;          /* sampling fields set by the caller */
	int64_t max_source;               /* prompt tokens at most */
	bool add_eos;
	int32_t *src, *out;
};
/* Opens the decoding model for sources of up to max_source prompt tokens
 * and targets of up to max_new, and loads path's weights; --num-beams and
 * --length-penalty from cfg. A peft plugin is refused (FW_ERR_UNSUPPORTED). */
enum fw_status s2s_gen_open(struct s2s_gen *g, const struct config *cfg,
			    const struct fw_plugin_slots *slots, const char *path,
			    struct fw_tokenizer *tok, int64_t max_source, int64_t max_new,
			    struct fw_err *err);
/* Generates the target of prompt[0..n), each token to on_token. */
enum fw_status s2s_gen_complete(struct s2s_gen *g, const int32_t *prompt, int64_t n,
				fw_rt_token_fn on_token, void *user, struct fw_err *err);
void s2s_gen_close(struct s2s_gen *g);

/* --- PEFT adapters (adapter.c) ------------------------------------------------------- */

int cmd_merge(int argc, char **argv);
/* --dtype's value (export, merge): f32, bf16 or f16 (Hugging Face's names
 * too); -1 otherwise. */
int export_dtype(const char *v, enum fw_dtype *dt);
/* export_nf4.c: rows [row0, row0 + rows) of the NF4 weight (codes, qabsmax,
 * stats as fw/quant.h) as bitsandbytes serializes a Params4bit under key,
 * of a model whose weights are dtype: the tensors (at most 6, FW_Q4 ones
 * written as U8 bytes) into out, their count returned; -1 with err set
 * when the rows do not fall on blocks. */
int export_nf4_part(const char *key, const struct fw_tensor *codes,
		    const struct fw_tensor *qabsmax, const struct fw_tensor *stats, int64_t row0,
		    int64_t rows, enum fw_dtype dtype, struct fw_tensor *out, struct fw_err *err);
/* config.json's quantization_config for those weights (transformers'
 * BitsAndBytesConfig: nf4, double quantization, compute in dt). */
struct json_t *export_nf4_config(enum fw_dtype compute);
/* import_nf4.c: the tensors of one bitsandbytes 4-bit weight (KEY +
 * BNB_SUFFIX[i]; NULL where the file lacks one), the rows of the fw weight
 * it is (all, or a part fw fuses) and that weight's columns. */
enum { BNB_WEIGHT, BNB_ABSMAX, BNB_QUANT_MAP, BNB_NESTED_ABSMAX, BNB_NESTED_MAP, BNB_STATE,
       BNB_STATE_FP4, BNB_N };
extern const char *const BNB_SUFFIX[BNB_N];
#define HF_NF4_PARTS_MAX 8
struct fw_st_entry;
struct bnb_part {
	const char *key;
	int64_t rows, cols;
	const struct fw_st_entry *t[BNB_N];
};
struct import_nf4_info {
	enum fw_dtype dtype;            /* the quant state's: the model's weights' */
	bool requantized;               /* the absmax was double-quantized again */
	int map_differs;                /* nested_quant_map values unlike fw's map */
};
/* Weight t from its parts (checked: shapes, dtypes, quant state) as fw's
 * three NF4 tensors, allocated into out (codes, qabsmax, stats). */
enum fw_status import_nf4_weight(const char *path, const struct fw_tensor *t,
				 const struct bnb_part *parts, int np, struct fw_tensor out[3],
				 struct import_nf4_info *info, struct fw_err *err);
/* t named name + suffix, of dtype dt and shape ne[0..nd), with zeroed
 * storage; false: out of memory, or the name is too long. */
bool nf4_tensor_new(struct fw_tensor *t, const char *name, const char *suffix, enum fw_dtype dt,
		    int nd, const int64_t *ne);
/* The attribute in which import keeps the bitsandbytes weights' dtype
 * (fwrun export's default --dtype for that file). */
#define BNB_DTYPE_ATTR "bnb_4bit_dtype"
int cmd_export_adapter(int argc, char **argv);
/* Fills the peft plugin's unset options from the config of the adapter that
 * --adapter (spec) and --adapter-name (name) choose; silent on bad files. */
void adapter_config_defaults(struct config *c, const char *spec, const char *name);
/* Checks every --adapter file against the model's base and applies the one
 * --adapter-name picks with the peft plugin's load hook (merge with
 * --merge-adapter, allowed only when inference). */
enum fw_status adapter_apply(const struct config *c, const struct fw_plugin_slots *slots,
			     struct fw_model *m, bool inference, struct fw_err *err);
/* DIR/adapter-NNNNNNNN.h5 through the peft plugin's save hook (if any). */
enum fw_status adapter_save(const struct fw_plugin_slots *slots, struct fw_model *m,
			    const char *dir, int64_t step, struct fw_err *err);

/* A jansson document (json_t *) as indented JSON with sorted keys, written
 * atomically (fw_file_write_atomic); NULL json is out of memory. */
enum fw_status write_json_file(const char *path, const void *json, struct fw_err *err);

/* x as text: an integer when it is one ("1048576", not "1.04858e+06"). */
const char *num_text(double x, char *buf, size_t len);
/* The exit code of a failure with status st: FW_ERR_INVALID (a bad option,
 * value, argument or name on the command line or in --config) is a usage
 * error (2); everything else (files, memory, formats, shapes, what this
 * build cannot do, library failures) is a runtime failure (1). FW_OK, which
 * a failure should never carry, counts as a runtime failure. */
int exit_code(enum fw_status st);
/* Prints "fwrun: MSG" on stderr (once, even if MSG starts with it) and
 * returns exit_code(st). */
int fail(enum fw_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints "fwrun: MSG" on stderr: an error the command goes on after. */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The CPUs this process may run on (its affinity mask). */
int allowed_cpus(void);
/* --threads: sets the OpenMP thread count (threads > 0) and warns when the
 * affinity mask allows fewer CPUs, as OMP_PROC_BIND=close with libgomp
 * (which Debian's libdnnl links) does to the main thread: every thread then
 * shares one core and a step takes twice as long (bench/README.md). */
void set_threads(int threads);

/* The log of runtime calls: "fwrun: LINE" on stderr. */
extern const struct fw_rt_log fwrun_log;

#endif
