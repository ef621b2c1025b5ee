/* config.c - fwrun's options: defaults < config file (INI) < command line.
 *
 * Every option has one flat name, like Megatron's flags: fwrun's own
 * (--micro-batch-size) and each loaded plugin's (--lora-r). A name declared
 * twice is an error. In an INI file, keys may sit at the top, in [run], or in
 * a section named after a plugin ([optim/adamw]).
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>


#include "fwrun.h"


static const char *const tokenizer_choices[] = { "none", "byte", "gpt2", NULL };
static const char *const data_formats[] = { "auto", "shards", "text", "jsonl", NULL };
static const char *const packing_choices[] = { "packed", "padded", NULL };
static const char *const too_long_choices[] = { "truncate", "drop", NULL };
static const char *const chat_templates[] = { "auto", "plain", "chatml", NULL };

static const struct fw_option_def run_defs[] = {
	{ "plugins", FW_OPT_STRING, "", 0, -1, NULL,
	  "comma-separated KIND/NAME plugins or .so paths" },
	{ "data", FW_OPT_STRING, "", 0, -1, NULL, "training token shards (llm.c .bin), comma-separated" },
	{ "valid-data", FW_OPT_STRING, "", 0, -1, NULL, "validation data (same formats as --data)" },
	{ "data-format", FW_OPT_CHOICE, "auto", 0, -1, data_formats,
	  "shards (llm.c .bin), text (plain text files) or jsonl (text, prompt/response or "
	  "messages records); auto goes by extension: .bin, .jsonl/.json, anything else text" },
	{ "tokenizer", FW_OPT_CHOICE, "none", 0, -1, tokenizer_choices,
	  "byte or gpt2 (with --vocab-file and --merge-file); stored in checkpoints, so "
	  "--load brings it back (none: token ids only)" },
	{ "vocab-file", FW_OPT_STRING, "", 0, -1, NULL,
	  "gpt2 tokenizer: vocab.json (Hugging Face) or encoder.json (OpenAI); without "
	  "--merge-file, a Hugging Face tokenizer.json" },
	{ "merge-file", FW_OPT_STRING, "", 0, -1, NULL,
	  "gpt2 tokenizer: merges.txt (Hugging Face) or vocab.bpe (OpenAI)" },
	{ "packing", FW_OPT_CHOICE, "packed", 0, -1, packing_choices,
	  "SFT examples: several per row, each attending only to itself (packed), or one "
	  "per row, padded (padded); padding is masked in attention and loss" },
	{ "chat-template", FW_OPT_CHOICE, "auto", 0, -1, chat_templates,
	  "messages records: auto (the tokenizer's own chat_template from its "
	  "tokenizer_config.json, else plain), plain (Role:\\n text, EOS after assistant "
	  "turns) or chatml (<|im_start|>role\\n text <|im_end|>, two special tokens added to "
	  "the tokenizer)" },
	{ "too-long", FW_OPT_CHOICE, "truncate", 0, -1, too_long_choices,
	  "SFT examples longer than seq-length + 1 tokens: cut the end off or drop them" },
	{ "calculate-per-token-loss", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "with accumulation, the loss is the mean over every loss token of the global batch, "
	  "not the mean of micro-batch means (matters when micro-batches hold different "
	  "numbers of loss tokens, as SFT ones do)" },
	{ "max-bad-records", FW_OPT_INT, "10", 0, 1e12, NULL,
	  "JSONL records that are skipped (with file:line) before the run stops" },
	{ "micro-batch-size", FW_OPT_INT, "4", 1, 1 << 20, NULL, "sequences per forward/backward" },
	{ "global-batch-size", FW_OPT_INT, "0", 0, 1 << 30, NULL,
	  "sequences per optimizer step; a multiple of micro-batch-size (0 = micro-batch-size)" },
	{ "seq-length", FW_OPT_INT, "64", 1, 1 << 24, NULL, "tokens per sequence" },
	{ "encoder-seq-length", FW_OPT_INT, "0", 0, 1 << 24, NULL,
	  "arch/encdec: encoder tokens per sequence, </s> included (Megatron's T5 flag; HF's "
	  "max_source_length); 0 = seq-length. generate --interactive: the longest source" },
	{ "decoder-seq-length", FW_OPT_INT, "0", 0, 1 << 24, NULL,
	  "arch/encdec: decoder (target) tokens per sequence, </s> included (Megatron's T5 "
	  "flag; HF's max_target_length); 0 = seq-length" },
	{ "train-iters", FW_OPT_INT, "100", 1, 1e12, NULL, "optimizer steps" },
	{ "lr", FW_OPT_FLOAT, "3e-4", 0, 10, NULL, "peak learning rate" },
	{ "min-lr", FW_OPT_FLOAT, "0.0", 0, 10, NULL, "learning-rate floor after decay" },
	{ "lr-decay-style", FW_OPT_CHOICE, "linear", 0, -1, fw_lr_style_names, "learning-rate decay" },
	{ "lr-decay-iters", FW_OPT_INT, "0", 0, 1e12, NULL, "decay length (0 = train-iters)" },
	{ "lr-warmup-iters", FW_OPT_INT, "0", 0, 1e12, NULL, "linear warmup iterations" },
	{ "lr-warmup-fraction", FW_OPT_FLOAT, "0.0", 0, 1, NULL,
	  "warmup as a fraction of lr-decay-iters (overrides lr-warmup-iters when > 0)" },
	{ "lr-warmup-init", FW_OPT_FLOAT, "0.0", 0, 10, NULL, "learning rate warmup starts from" },
	{ "lr-wsd-decay-style", FW_OPT_CHOICE, "exponential", 0, -1, fw_wsd_style_names,
	  "WSD anneal shape" },
	{ "lr-wsd-decay-iters", FW_OPT_INT, "0", 0, 1e12, NULL, "WSD anneal length" },
	{ "weight-decay", FW_OPT_FLOAT, "0.01", 0, 10, NULL,
	  "decoupled weight decay, not applied to 1-D tensors" },
	{ "clip-grad", FW_OPT_FLOAT, "1.0", -1, 1e9, NULL,
	  "clip the global gradient L2 norm to this (<= 0 disables)" },
	{ "bf16", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "mixed precision with bf16 (docs/mixed-precision.md); fp32 master weights, "
	  "gradients and optimizer state; no loss scaling unless --loss-scale" },
	{ "fp16", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "mixed precision with fp16 (docs/mixed-precision.md) and loss scaling (dynamic "
	  "unless --loss-scale)" },
	{ "loss-scale", FW_OPT_STRING, "", 0, -1, NULL,
	  "a positive static loss scale; unset: dynamic scaling with --fp16, none with --bf16" },
	{ "initial-loss-scale", FW_OPT_FLOAT, "4294967296", 1e-30, 3.4e38, NULL,
	  "dynamic loss scaling: the starting scale (2^32)" },
	{ "min-loss-scale", FW_OPT_FLOAT, "1.0", 1e-30, 3.4e38, NULL,
	  "dynamic loss scaling: the scale never falls below this" },
	{ "loss-scale-window", FW_OPT_INT, "1000", 1, 1e12, NULL,
	  "dynamic loss scaling: steps without overflow before the scale doubles" },
	{ "hysteresis", FW_OPT_INT, "2", 1, 1e12, NULL,
	  "dynamic loss scaling: overflows (since the last growth) before the scale halves" },
	{ "attention-softmax-in-fp32", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "Megatron's flag, accepted: fw computes softmax in fp32 in every mode" },
	{ "accumulate-allreduce-grads-in-fp32", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "Megatron's flag, accepted: fw keeps main gradients in fp32 in every mode" },
	{ "debug-inject-overflow", FW_OPT_STRING, "", 0, -1, NULL,
	  "testing: STEP[,STEP...] whose gradients get an inf after the backward (a "
	  "scaled run skips them; an unscaled one stops as diverged)" },
	{ "seed", FW_OPT_INT, "1234", 0, 4294967295.0, NULL, "random seed (init, dropout, shuffle)" },
	{ "drop-last", FW_OPT_BOOL, "true", 0, -1, NULL,
	  "drop an epoch's last partial global batch (--no-drop-last keeps it)" },
	{ "shuffle", FW_OPT_BOOL, "true", 0, -1, NULL,
	  "shuffle micro-batches each epoch (--no-shuffle: llm.c order)" },
	{ "eval-interval", FW_OPT_INT, "0", 0, 1e12, NULL,
	  "evaluate every N steps (0 = only at the end)" },
	{ "eval-iters", FW_OPT_INT, "10", 0, 1e9, NULL, "validation micro-batches per evaluation" },
	{ "run-dir", FW_OPT_STRING, "", 0, -1, NULL,
	  "run directory: config, metrics.jsonl, checkpoints (default runs/DATE-TIME)" },
	{ "save", FW_OPT_STRING, "", 0, -1, NULL, "checkpoint directory (default: the run directory)" },
	{ "save-interval", FW_OPT_INT, "0", 0, 1e12, NULL,
	  "checkpoint every N steps (0 = only at the end)" },
	{ "load", FW_OPT_STRING, "", 0, -1, NULL,
	  "checkpoint to resume from, or a weights file to start from" },
	{ "finetune", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "with --load of a checkpoint: take its weights only (step 0, new optimizer state)" },
	{ "base-only", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "with --load: drop the file's tensors that no loaded plugin owns (a LoRA run's "
	  "adapter without peft/lora) instead of refusing the file" },
	{ "overwrite", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "train: start a new run in a run directory that holds another one, moving its "
	  "files into a replaced-DATE-TIME folder there" },
	{ "threads", FW_OPT_INT, "0", 0, 4096, NULL, "threads (0 = all cores)" },
	{ "log-interval", FW_OPT_INT, "1", 1, 1e12, NULL, "log every N steps" },
	{ "prompt-tokens", FW_OPT_STRING, "", 0, -1, NULL, "generate: prompt token ids, comma-separated" },
	{ "max-new-tokens", FW_OPT_INT, "32", 1, 1 << 20, NULL, "generate: tokens to produce" },
	{ "temperature", FW_OPT_FLOAT, "1.0", 0, 100, NULL, "generate: sampling temperature (0 = greedy)" },
	{ "top-k", FW_OPT_INT, "0", 0, 1 << 24, NULL, "generate: keep the k most likely tokens (0 = all)" },
	{ "top-p", FW_OPT_FLOAT, "1.0", 0, 1, NULL, "generate: nucleus sampling mass" },
	{ "prompt", FW_OPT_STRING, "", 0, -1, NULL, "generate: prompt text (needs a tokenizer)" },
	{ "prompt-file", FW_OPT_STRING, "", 0, -1, NULL, "generate: read the prompt text from a file" },
	{ "num-beams", FW_OPT_INT, "1", 1, 64, NULL,
	  "generate, arch/encdec: beam search with this many beams (1 = greedy)" },
	{ "length-penalty", FW_OPT_FLOAT, "1.0", -10, 10, NULL,
	  "generate, arch/encdec beam search: scores are log-likelihood / length^this" },
	{ "prompts", FW_OPT_STRING, "", 0, -1, NULL,
	  "generate: JSONL of prompts, {\"prompt\": TEXT}, {\"messages\": [...]} (--chat) or "
	  "{\"tokens\": [IDS]} a line, decoded --batch-size at a time; prints one JSON line "
	  "per prompt with its tokens, log-probabilities and text" },
	{ "batch-size", FW_OPT_INT, "8", 1, 4096, NULL,
	  "generate --prompts: prompts decoded together (each row as if alone)" },
	{ "repetition-penalty", FW_OPT_FLOAT, "1.0", 0.01, 100, NULL,
	  "generate: divide positive (multiply negative) logits of tokens already in the "
	  "context by this (CTRL; 1 = off)" },
	{ "stop", FW_OPT_STRING, "", 0, -1, NULL,
	  "generate: stop when the text produced contains this string (a JSON array of "
	  "strings for several); the EOS token always stops" },
	{ "eos-token-id", FW_OPT_STRING, "", 0, -1, NULL,
	  "generate: end-of-sequence ids, comma-separated (Hugging Face's eos_token_id; "
	  "replaces generation_config.json's): a row that generates one stops there, the id "
	  "kept in its ids" },
	{ "interactive", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "generate: read prompts from stdin, one a line, and answer each" },
	{ "chat", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "generate: the prompt is a user message (or a JSON array of messages), put in "
	  "--chat-template's format with the assistant's header; the template's end of turn "
	  "stops" },
	{ "score-data", FW_OPT_STRING, "", 0, -1, NULL,
	  "eval: JSONL of prompt/response (log-likelihood) or prompt/choices/answer "
	  "(multiple-choice accuracy) records" },
	{ "adapter", FW_OPT_STRING, "", 0, -1, NULL,
	  "PEFT adapter files, [NAME=]FILE.h5,...: the one --adapter-name picks is applied "
	  "on top of --load (its options are the peft plugin's defaults)" },
	{ "adapter-name", FW_OPT_STRING, "", 0, -1, NULL,
	  "which --adapter to apply (default: the first)" },
	{ "merge-adapter", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "eval/generate: fold the adapter into the weights in memory" },
	{ "labels", FW_OPT_STRING, "", 0, -1, NULL,
	  "arch/encoder classification: the label names in id order, comma-separated (empty: "
	  "collected from --data, sorted; stored in the checkpoint)" },
	{ "mlm-probability", FW_OPT_FLOAT, "0.15", 0.001, 1, NULL,
	  "arch/encoder --head=mlm: share of tokens masked (BERT: 0.15; 80% [MASK], 10% random, "
	  "10% kept)" },
	{ "noise-density", FW_OPT_FLOAT, "0.15", 0.001, 0.999, NULL,
	  "arch/encdec span corruption (text data): share of tokens in noise spans (T5: 0.15)" },
	{ "mean-noise-span-length", FW_OPT_FLOAT, "3.0", 1, 1000, NULL,
	  "arch/encdec span corruption: mean length of a noise span (T5: 3)" },
	{ "output", FW_OPT_STRING, "", 0, -1, NULL,
	  "eval, arch/encoder classification: JSONL of each record's predicted label and "
	  "probabilities; arch/encdec with --predict-with-generate: each record's prediction, "
	  "exact match and F1" },
	{ "predict-with-generate", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "eval, arch/encdec: generate each {\"input\", \"target\"} record's target (greedy, or "
	  "--num-beams) and report SQuAD v1.1's exact match and token F1 (percent)" },
};

/* Which commands each of fwrun's options does something in (plan takes
 * train's: it plans the run those options describe). */
enum { C_TRAIN = 1, C_EVAL = 2, C_GEN = 4, C_ALL = 7 };
static const struct {
	const char *name;
	unsigned cmds;
} run_cmds[] = {
	{ "plugins", C_ALL }, { "data", C_TRAIN | C_EVAL }, { "valid-data", C_TRAIN | C_EVAL },
	{ "data-format", C_TRAIN | C_EVAL }, { "tokenizer", C_ALL }, { "vocab-file", C_ALL },
	{ "merge-file", C_ALL }, { "packing", C_TRAIN | C_EVAL },
	{ "chat-template", C_ALL }, { "too-long", C_TRAIN | C_EVAL },
	{ "calculate-per-token-loss", C_TRAIN | C_EVAL }, { "max-bad-records", C_TRAIN | C_EVAL },
	{ "micro-batch-size", C_TRAIN | C_EVAL }, { "global-batch-size", C_TRAIN },
	{ "seq-length", C_TRAIN | C_EVAL }, { "train-iters", C_TRAIN }, { "lr", C_TRAIN },
	{ "encoder-seq-length", C_ALL }, { "decoder-seq-length", C_TRAIN | C_EVAL },
	{ "min-lr", C_TRAIN }, { "lr-decay-style", C_TRAIN }, { "lr-decay-iters", C_TRAIN },
	{ "lr-warmup-iters", C_TRAIN }, { "lr-warmup-fraction", C_TRAIN },
	{ "lr-warmup-init", C_TRAIN }, { "lr-wsd-decay-style", C_TRAIN },
	{ "lr-wsd-decay-iters", C_TRAIN }, { "weight-decay", C_TRAIN }, { "clip-grad", C_TRAIN },
	{ "seed", C_ALL }, { "drop-last", C_TRAIN }, { "shuffle", C_TRAIN },
	{ "eval-interval", C_TRAIN }, { "eval-iters", C_TRAIN | C_EVAL }, { "run-dir", C_TRAIN },
	{ "save", C_TRAIN }, { "save-interval", C_TRAIN }, { "load", C_ALL },
	{ "finetune", C_TRAIN }, { "base-only", C_ALL }, { "overwrite", C_TRAIN },
	{ "threads", C_ALL }, { "log-interval", C_TRAIN }, { "prompt-tokens", C_GEN },
	{ "max-new-tokens", C_GEN }, { "temperature", C_GEN }, { "top-k", C_GEN },
	{ "top-p", C_GEN }, { "prompt", C_GEN }, { "prompt-file", C_GEN },
	{ "repetition-penalty", C_GEN }, { "num-beams", C_GEN | C_EVAL },
	{ "length-penalty", C_GEN | C_EVAL },
	{ "stop", C_GEN }, { "interactive", C_GEN }, { "chat", C_GEN },
	{ "prompts", C_GEN }, { "batch-size", C_GEN }, { "eos-token-id", C_GEN },
	{ "score-data", C_EVAL }, { "adapter", C_ALL }, { "adapter-name", C_ALL },
	{ "merge-adapter", C_ALL },       /* train refuses it with its own error */
	{ "bf16", C_TRAIN | C_EVAL | C_GEN }, { "fp16", C_TRAIN | C_EVAL | C_GEN },
	{ "loss-scale", C_TRAIN },
	{ "initial-loss-scale", C_TRAIN }, { "min-loss-scale", C_TRAIN },
	{ "loss-scale-window", C_TRAIN }, { "hysteresis", C_TRAIN },
	{ "attention-softmax-in-fp32", C_TRAIN }, { "accumulate-allreduce-grads-in-fp32", C_TRAIN },
	{ "debug-inject-overflow", C_TRAIN },
	{ "labels", C_TRAIN | C_EVAL }, { "mlm-probability", C_TRAIN | C_EVAL },
	{ "noise-density", C_TRAIN | C_EVAL }, { "mean-noise-span-length", C_TRAIN | C_EVAL },
	{ "output", C_EVAL }, { "predict-with-generate", C_EVAL },
};

static unsigned cmd_bit(const char *cmd)
{
	return !strcmp(cmd, "eval") ? C_EVAL : !strcmp(cmd, "generate") ? C_GEN : C_TRAIN;
}

/* The commands an option of owner o does something in. */
static unsigned option_cmds(const struct config *c, const struct fw_options *o,
			    const char *name)
{
	if (o != c->run)          /* an optimizer's options are for training only */
		return c->plugin[FW_KIND_OPTIM] && o == c->plugin[FW_KIND_OPTIM]->opts ? C_TRAIN :
		       C_ALL;
	for (size_t i = 0; i < sizeof(run_cmds) / sizeof(run_cmds[0]); i++)
		if (!strcmp(run_cmds[i].name, name))
			return run_cmds[i].cmds;
	return C_ALL;
}

bool option_applies(const struct config *c, const struct fw_options *o, const char *name,
		    const char *cmd)
{
	return option_cmds(c, o, name) & cmd_bit(cmd);
}

static struct fw_options *owner_of(struct config *c, const char *name);
static const char *value_of(const struct fw_options *o, const char *name);
static const struct fw_option_def *def_of(struct fw_options *o, const char *name);

/* One warning line when option name (of o, given as said: "--lr" or
 * "--lr (from run.ini)") does nothing in cmd. */
static void warn_if_unused(struct config *c, struct fw_options *o, const char *name,
			   const char *said, const char *cmd)
{
	static const char *const names[] = { "train", "eval", "generate" };
	unsigned cmds = option_cmds(c, o, name);
	if (!(cmds & cmd_bit(cmd))) {
		char list[64] = "";
		for (int k = 0; k < 3; k++)
			if (cmds & (1u << k))
				snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
					 list[0] ? ", " : "", names[k]);
		fprintf(stderr, "fwrun: warning: %s does nothing in %s (it is for %s)\n", said, cmd,
			list);
	} else if (!strcmp(cmd, "train") &&
		   (!strcmp(name, "eval-interval") || !strcmp(name, "eval-iters")) &&
		   !*value_of(c->run, "valid-data")) {
		fprintf(stderr, "fwrun: warning: %s does nothing without --valid-data\n", said);
	}
}

/* The option name of argv[i] ("--temperature=0.5": "temperature"), without
 * a "no-" prefix of a known option; NULL when a[i] is not an option. */
static struct fw_options *argv_option(struct config *c, const char *a, char *name, size_t len)
{
	if (strncmp(a, "--", 2))
		return NULL;
	size_t n = strcspn(a + 2, "=");
	snprintf(name, len, "%.*s", (int)(n < len ? n : len - 1), a + 2);
	struct fw_options *o = owner_of(c, name);
	if (!o && !strncmp(name, "no-", 3) && (o = owner_of(c, name + 3)))
		memmove(name, name + 3, strlen(name + 3) + 1);
	return o;
}

struct ini_warn {
	struct config *c;
	const char *cmd;
	int argc;
	char **argv;
};

/* An entry of the --config file: warned about unless it holds the option's
 * default (a dumped configuration lists every option) or argv sets it too. */
static int ini_warn_entry(void *user, const char *section, const char *name, const char *value,
			  int line)
{
	struct ini_warn *w = user;
	if (!name)
		return 1;        /* a section line */
	(void)line;
	struct fw_options *o = NULL;
	for (int k = 1; k < FW_KIND_COUNT && *section && strcmp(section, "run"); k++)
		if (w->c->plugin[k] && !strcmp(w->c->plugin[k]->desc->name, section))
			o = w->c->plugin[k]->opts;
	if (!*section || !strcmp(section, "run"))
		o = owner_of(w->c, name);
	const struct fw_option_def *d = o ? def_of(o, name) : NULL;
	if (!d || !strcmp(name, "plugins") || (d->def && !strcmp(d->def, value)))
		return 1;
	char argv_name[128];
	for (int i = 0; i < w->argc; i++)
		if (argv_option(w->c, w->argv[i], argv_name, sizeof(argv_name)) &&
		    !strcmp(argv_name, name))
			return 1;
	char said[512];
	snprintf(said, sizeof(said), "--%s (from %s)", name, w->c->config_path);
	warn_if_unused(w->c, o, name, said, w->cmd);
	return 1;
}

void warn_unused_options(struct config *c, const char *cmd, int argc, char **argv)
{
	for (int i = 0; i < argc; i++) {
		char name[128], said[140];
		struct fw_options *o = argv_option(c, argv[i], name, sizeof(name));
		if (!o)
			continue;
		snprintf(said, sizeof(said), "--%s", name);
		warn_if_unused(c, o, name, said, cmd);
	}
	if (c->config_path) {
		struct ini_warn w = { c, cmd, argc, argv };
		fw_rt_ini_parse_file(c->config_path, ini_warn_entry, &w);
	}
}

const struct fw_option_def *run_option_defs(int *n)
{
	*n = (int)(sizeof(run_defs) / sizeof(run_defs[0]));
	return run_defs;
}

const char *config_option_default(const struct config *c, const char *section, const char *name)
{
	if (!*section || !strcmp(section, "run")) {
		for (size_t i = 0; i < sizeof(run_defs) / sizeof(run_defs[0]); i++)
			if (!strcmp(run_defs[i].name, name))
				return run_defs[i].def;
		return NULL;
	}
	for (int k = 1; c && k < FW_KIND_COUNT; k++) {
		const struct fw_loaded *p = c->plugin[k];
		if (!p || strcmp(p->desc->name, section))
			continue;
		for (int i = 0; i < fw_options_count(p->opts); i++)
			if (!strcmp(fw_options_def(p->opts, i)->name, name))
				return fw_options_def(p->opts, i)->def;
	}
	return NULL;
}

/* --- flat-name lookup across fwrun's and the plugins' options ----------------- */

static struct fw_options *owner_of(struct config *c, const char *name)
{
	for (int i = 0; i < fw_options_count(c->run); i++)
		if (!strcmp(fw_options_def(c->run, i)->name, name))
			return c->run;
	for (int k = 1; k < FW_KIND_COUNT; k++) {
		struct fw_options *o = c->plugin[k] ? c->plugin[k]->opts : NULL;
		for (int i = 0; o && i < fw_options_count(o); i++)
			if (!strcmp(fw_options_def(o, i)->name, name))
				return o;
	}
	return NULL;
}

static const char *value_of(const struct fw_options *o, const char *name)
{
	for (int i = 0; i < fw_options_count(o); i++)
		if (!strcmp(fw_options_def(o, i)->name, name))
			return fw_options_value(o, i);
	return "";
}

static const struct fw_option_def *def_of(struct fw_options *o, const char *name)
{
	for (int i = 0; i < fw_options_count(o); i++)
		if (!strcmp(fw_options_def(o, i)->name, name))
			return fw_options_def(o, i);
	return NULL;
}

/* Plugin options that take a run option's value when left unset (AdaLoRA's
 * schedule length is the run's). */
static const char *const from_run[][2] = { { "adalora-total-step", "train-iters" } };

static enum fw_status inherit_from_run(struct config *c, struct fw_err *err)
{
	for (size_t i = 0; i < sizeof(from_run) / sizeof(from_run[0]); i++) {
		struct fw_options *o = owner_of(c, from_run[i][0]);
		if (!o || o == c->run || fw_options_has(o, from_run[i][0]) ||
		    !fw_options_has(c->run, from_run[i][1]))
			continue;
		enum fw_status s = fw_options_set(o, from_run[i][0],
						  value_of(c->run, from_run[i][1]), err);
		if (s != FW_OK)
			return s;
	}
	return FW_OK;
}

static enum fw_status unknown(struct config *c, const char *name, const char *where,
			      struct fw_err *err)
{
	const char *names[512];
	int n = 0;
	struct fw_options *all[FW_KIND_COUNT + 1] = { c->run };
	for (int k = 1; k < FW_KIND_COUNT; k++)
		all[k] = c->plugin[k] ? c->plugin[k]->opts : NULL;
	for (int a = 0; a < FW_KIND_COUNT; a++)
		for (int i = 0; all[a] && i < fw_options_count(all[a]) && n < 512; i++)
			names[n++] = fw_options_def(all[a], i)->name;
	const char *near = fw_nearest_name(name, names, n);
	return fw_errorf(err, FW_ERR_INVALID, "%sunknown option '--%s'%s%s%s", where, name,
			 near ? " (did you mean '--" : "", near ? near : "", near ? "'?)" : "");
}

static enum fw_status set_flat(struct config *c, const char *name, const char *value,
			       const char *where, struct fw_err *err)
{
	struct fw_options *o = owner_of(c, name);
	if (!o)
		return unknown(c, name, where, err);
	struct fw_err e = { 0 };
	if (fw_options_set(o, name, value, &e) != FW_OK)
		return fw_errorf(err, e.status, "%s%s", where, e.msg);
	return FW_OK;
}

/* --- INI files ------------------------------------------------------------------ */

struct ini_ctx {
	struct config *c;
	const char *path;
	struct fw_err *err;
	int line;
};

static int ini_entry(void *user, const char *section, const char *name, const char *value,
		     int line)
{
	struct ini_ctx *ic = user;
	char where[512];
	if (ic->err->status != FW_OK)
		return 0;       /* report the first error only */
	if (!name)
		return 1;
	ic->line = line;
	snprintf(where, sizeof(where), "%s: ", ic->path);
	if (*section && strcmp(section, "run")) {
		struct fw_loaded *p = NULL;
		for (int k = 1; k < FW_KIND_COUNT; k++)
			if (ic->c->plugin[k] && !strcmp(ic->c->plugin[k]->desc->name, section))
				p = ic->c->plugin[k];
		if (!p) {
			fw_errorf(ic->err, FW_ERR_INVALID,
				  "%ssection [%s] names a plugin that is not loaded", where,
				  section);
			return 0;
		}
		struct fw_err e = { 0 };
		if (fw_options_set(p->opts, name, value, &e) != FW_OK) {
			fw_errorf(ic->err, e.status, "%s%s", where, e.msg);
			return 0;
		}
		return 1;
	}
	if (!strcmp(name, "plugins"))
		return 1;      /* read before loading plugins */
	return set_flat(ic->c, name, value, where, ic->err) == FW_OK;
}

/* Reads "plugins = ..." from the file before anything else. */
static int ini_plugins(void *user, const char *section, const char *name, const char *value,
		       int line)
{
	char **out = user;
	if (!name)
		return 1;        /* a section line */
	(void)line;
	if ((!*section || !strcmp(section, "run")) && !strcmp(name, "plugins")) {
		free(*out);
		*out = strdup(value);
	}
	return 1;
}

static enum fw_status ini_apply(struct config *c, const char *path, struct fw_err *err)
{
	struct ini_ctx ic = { c, path, err, 0 };
	fw_err_clear(err);
	int rc = fw_rt_ini_parse_file(path, ini_entry, &ic);
	if (rc == -1)
		return fw_errorf(err, FW_ERR_IO, "%s: cannot open config file", path);
	if (rc == -2)
		return fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
	if (rc > 0 && err->status == FW_OK)
		return fw_errorf(err, FW_ERR_FORMAT, "%s:%d: malformed line", path, rc);
	if (rc > 0) {
		char msg[FW_ERR_MSG_MAX];
		/* name the line: "run.ini:12: ..." */
		const char *rest = err->msg + strlen(path) + 2;
		snprintf(msg, sizeof(msg), "%s:%d: %s", path, rc, rest);
		return fw_errorf(err, err->status, "%s", msg);
	}
	return FW_OK;
}

/* A checkpoint or imported weights file carries the configuration it was
 * made with: its plugin options fill in whatever the user did not set, so
 * --load=gpt2.h5 needs no --n-layer etc. */
static int ini_defaults(void *user, const char *section, const char *name, const char *value,
			int line)
{
	struct config *c = user;
	if (!name)
		return 1;        /* a section line */
	(void)line;
	for (int k = 1; k < FW_KIND_COUNT; k++) {
		struct fw_loaded *p = c->plugin[k];
		if (!p || strcmp(p->desc->name, section) || fw_options_has(p->opts, name))
			continue;
		fw_options_set(p->opts, name, value, NULL);   /* unknown keys: ignored */
	}
	return 1;
}

static void apply_file_config(struct config *c, const char *load)
{
	char path[4200];
	struct fw_err err = { 0 };
	if (resolve_load(load, path, sizeof(path), &err) != FW_OK)
		return;           /* reported when the checkpoint is loaded */
	char *text = NULL;
	if (fw_rt_ckpt_read_config(path, &text, NULL) != FW_OK)
		return;
	fw_rt_ini_parse(text, ini_defaults, c);
	fw_free(text);
}

/* --- plugins ---------------------------------------------------------------------- */

static enum fw_status load_plugins(struct config *c, const char *list, struct fw_err *err)
{
	char *copy = strdup(list), *save = NULL;
	enum fw_status s = FW_OK;
	if (!copy)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ')
			tok++;
		if (!*tok)
			continue;
		struct fw_loaded *p = NULL;
		s = fw_plugin_open(tok, 0, &p, err);
		if (s == FW_ERR_NOT_FOUND)        /* a name on the command line: bad input */
			s = err->status = FW_ERR_INVALID;
		if (s != FW_OK)
			break;
		int k = p->desc->kind;
		if (c->plugin[k]) {
			if (!strcmp(c->plugin[k]->desc->name, p->desc->name))
				s = fw_errorf(err, FW_ERR_INVALID,
					      "two plugins named '%s': %s and %s", p->desc->name,
					      c->plugin[k]->path, p->path);
			else
				s = fw_errorf(err, FW_ERR_INVALID,
					      "two %s plugins: '%s' and '%s'; choose one",
					      fw_plugin_kind_name(k), c->plugin[k]->desc->name,
					      p->desc->name);
			fw_plugin_close(p);
			break;
		}
		c->plugin[k] = p;
	}
	free(copy);
	if (s != FW_OK)
		return s;
	/* A flat option name must have one owner. */
	for (int k = 1; k < FW_KIND_COUNT; k++) {
		struct fw_options *o = c->plugin[k] ? c->plugin[k]->opts : NULL;
		for (int i = 0; o && i < fw_options_count(o); i++) {
			const char *name = fw_options_def(o, i)->name;
			if (owner_of(c, name) != o)
				return fw_errorf(err, FW_ERR_INVALID,
						 "option '%s' of plugin '%s' is also declared by %s",
						 name, c->plugin[k]->desc->name,
						 owner_of(c, name) == c->run ? "fwrun" : "another plugin");
		}
	}
	return FW_OK;
}

/* --- argv ------------------------------------------------------------------------------ */

static bool is_bool(struct config *c, const char *name)
{
	struct fw_options *o = owner_of(c, name);
	const struct fw_option_def *d = o ? def_of(o, name) : NULL;
	return d && d->type == FW_OPT_BOOL;
}

/* --- what a checkpoint's configuration gives the commands that load it ----------- */

/* Run options eval and plan take from the checkpoint they load when the
 * user leaves them out: the shape of its batches and how its data is laid out.
 * A resumed training run (--load without --finetune) takes every option but
 * these, which belong to this invocation (an adapter applied at the start of
 * the run is in the checkpoint's weights already). */
static const char *const shape_options[] = {
	"micro-batch-size", "seq-length", "encoder-seq-length", "decoder-seq-length", "packing", "chat-template", "too-long",
	"calculate-per-token-loss", "labels", "mlm-probability", "noise-density",
	"mean-noise-span-length",
};
static const char *const not_resumed[] = {
	"plugins", "load", "finetune", "overwrite", "base-only", "adapter", "adapter-name",
	"merge-adapter",
};

static bool listed(const char *name, const char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(name, list[i]))
			return true;
	return false;
}

static bool true_text(const char *v)
{
	return !strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "yes") ||
	       !strcasecmp(v, "on");
}

struct inherit {
	struct config *c;
	const char *cmd;
	bool resume;
	char taken[1024];
};

static int inherit_entry(void *user, const char *section, const char *name, const char *value,
			 int line)
{
	struct inherit *in = user;
	if (!name)
		return 1;        /* a section line */
	(void)line;
	if ((*section && strcmp(section, "run")) || fw_options_has(in->c->run, name) ||
	    !def_of(in->c->run, name))
		return 1;
	bool take = in->resume ? !listed(name, not_resumed, sizeof(not_resumed) /
					 sizeof(not_resumed[0])) :
		    (!strcmp(in->cmd, "eval") || !strcmp(in->cmd, "plan")) &&
		    listed(name, shape_options, sizeof(shape_options) / sizeof(shape_options[0]));
	if (!take || !strcmp(value, value_of(in->c->run, name)))
		return 1;
	const struct fw_option_def *d = def_of(in->c->run, name);
	bool is_default = d->def && !strcmp(d->def, value);
	if (fw_options_set(in->c->run, name, value, NULL) == FW_OK && !is_default)
		snprintf(in->taken + strlen(in->taken), sizeof(in->taken) - strlen(in->taken),
			 " --%s=%s", name, value);
	return 1;
}

/* The checkpoint's [run] plugins a command loads: eval and generate leave
 * the optimizer out. malloc'd; NULL if the checkpoint names none. */
static char *inherited_plugins(const char *config, const char *cmd)
{
	char *list = NULL;
	fw_rt_ini_parse(config, ini_plugins, &list);
	if (!list || (strcmp(cmd, "eval") && strcmp(cmd, "generate")))
		return list;
	char *out = calloc(1, strlen(list) + 1), *save = NULL;
	for (char *p = out ? strtok_r(list, ",", &save) : NULL; p; p = strtok_r(NULL, ",", &save))
		if (strncmp(p, "optim/", 6))
			sprintf(out + strlen(out), "%s%s", *out ? "," : "", p);
	free(list);
	return out;
}

/* Fills the run options the user left out from the checkpoint's config
 * (which ones: shape_options, or all for a resumed training run) and says
 * on one line what it took. */
static void inherit_run_options(struct config *c, const char *cmd, const char *ckpt,
				const char *config, const char *plugins)
{
	struct inherit in = { .c = c, .cmd = cmd };
	in.resume = !strcmp(cmd, "train") && !true_text(value_of(c->run, "finetune"));
	if (plugins)
		snprintf(in.taken, sizeof(in.taken), " --plugins=%s", plugins);
	fw_rt_ini_parse(config, inherit_entry, &in);
	if (!in.taken[0])
		return;
	size_t n = strlen(ckpt) + strlen(in.taken) + 64;
	if ((c->taken = malloc(n)))
		snprintf(c->taken, n, "from %s:%s (give them to override)", ckpt, in.taken);
}

void config_report(const struct config *c)
{
	if (c->taken)
		fprintf(stderr, "fwrun: %s\n", c->taken);
}

/* --tokenizer=byte sets the arch's vocab-size (257, 259 with chatml's two
 * special tokens) unless it is set; one set smaller is an error. */
static enum fw_status vocab_from_tokenizer(struct config *c, struct fw_err *err)
{
	struct fw_loaded *arch = c->plugin[FW_KIND_ARCH];
	const struct fw_option_def *d = arch ? def_of(arch->opts, "vocab-size") : NULL;
	if (!d || d->type != FW_OPT_INT || strcmp(value_of(c->run, "tokenizer"), "byte"))
		return FW_OK;
	bool chatml = !strcmp(value_of(c->run, "chat-template"), "chatml");
	long need = 257 + (chatml ? 2 : 0);     /* the task's own: session_open */
	if (fw_options_has(arch->opts, "vocab-size")) {
		long have = strtol(value_of(arch->opts, "vocab-size"), NULL, 10);
		if (have < need)
			return fw_errorf(err, FW_ERR_INVALID, "the byte tokenizer's %ld tokens%s do not "
					 "fit --vocab-size=%ld; leave --vocab-size out to get %ld", need,
					 chatml ? " (with chatml's two)" : "", have, need);
		return FW_OK;
	}
	char v[16];
	snprintf(v, sizeof(v), "%ld", need);
	c->vocab_auto = need;
	return fw_options_set(arch->opts, "vocab-size", v, err);
}

static enum fw_status apply_argv(struct config *c, int argc, char **argv, char **pos,
				 int max_pos, int *n_pos, struct fw_err *err);
static enum fw_status note_user_set(struct config *c, struct fw_err *err);

enum fw_status config_load(struct config *c, const char *cmd, int argc, char **argv,
			   bool need_plugins, char **pos, int max_pos, int *n_pos,
			   struct fw_err *err)
{
	int nd;
	const char *plugins = NULL, *load = NULL;
	char *file_plugins = NULL, *ckpt_config = NULL, ckpt[4200] = "";
	char *ckpt_plugins = NULL;
	enum fw_status s;

	memset(c, 0, sizeof(*c));
	*n_pos = 0;
	const struct fw_option_def *defs = run_option_defs(&nd);   /* sets nd first */
	c->run = fw_options_new(defs, nd, "fwrun");
	if (!c->run)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");

	/* Pass 1: --config and --plugins decide which options exist. */
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		const char *cp = !strncmp(a, "--config=", 9) ? a + 9 :
				 !strcmp(a, "--config") && i + 1 < argc ? argv[++i] : NULL;
		if (cp) {
			free(c->config_path);     /* the last --config wins */
			c->config_path = strdup(cp);
		}
		if (!strncmp(a, "--plugins=", 10))
			plugins = a + 10;
		else if (!strcmp(a, "--plugins") && i + 1 < argc)
			plugins = argv[++i];
		else if (!strncmp(a, "--load=", 7))
			load = a + 7;
		else if (!strcmp(a, "--load") && i + 1 < argc)
			load = argv[++i];
	}
	/* The checkpoint --load names (its directory's newest) says how it was
	 * made: plugins and options the user leaves out come from it. */
	struct fw_err le = { 0 };
	if (cmd && load && *load && resolve_load(load, ckpt, sizeof(ckpt), &le) == FW_OK &&
	    fw_rt_ckpt_read_config(ckpt, &ckpt_config, NULL) == FW_OK)
		ckpt_plugins = inherited_plugins(ckpt_config, cmd);
	if (c->config_path) {
		FILE *f = fopen(c->config_path, "r");
		if (!f)
			return fw_errorf(err, FW_ERR_IO, "%s: cannot open config file",
					 c->config_path);
		fclose(f);
		fw_rt_ini_parse_file(c->config_path, ini_plugins, &file_plugins);
	}
	if (!plugins)
		plugins = file_plugins;
	bool took_plugins = false;
	if (!plugins && ckpt_plugins && *ckpt_plugins) {
		plugins = ckpt_plugins;
		took_plugins = true;
	}
	if (plugins && *plugins) {
		s = load_plugins(c, plugins, err);
		if (s == FW_OK)
			s = fw_options_set(c->run, "plugins", plugins, err);
		if (s != FW_OK) {
			free(file_plugins);
			free(ckpt_plugins);
			fw_free(ckpt_config);
			return s;
		}
	}
	free(file_plugins);
	if (need_plugins && !c->plugin[FW_KIND_ARCH]) {
		free(ckpt_plugins);
		fw_free(ckpt_config);
		return fw_errorf(err, FW_ERR_INVALID,
				 "--plugins needs an arch plugin (e.g. --plugins=arch/decoder,...)");
	}

	/* Pass 2: the config file, then the command line on top. */
	s = c->config_path ? ini_apply(c, c->config_path, err) : FW_OK;
	if (s == FW_OK)
		s = apply_argv(c, argc, argv, pos, max_pos, n_pos, err);
	if (s == FW_OK && (s = note_user_set(c, err)) == FW_OK && ckpt_config)
		inherit_run_options(c, cmd, ckpt, ckpt_config, took_plugins ? ckpt_plugins : NULL);
	free(ckpt_plugins);
	fw_free(ckpt_config);
	if (s != FW_OK)
		return s;
	if (fw_options_has(c->run, "adapter"))       /* before --load's: more specific */
		adapter_config_defaults(c, value_of(c->run, "adapter"),
					value_of(c->run, "adapter-name"));
	if (fw_options_has(c->run, "load"))
		apply_file_config(c, value_of(c->run, "load"));
	if (!cmd)          /* --help: the options exist; values need not be complete */
		return FW_OK;
	if ((s = vocab_from_tokenizer(c, err)) != FW_OK)
		return s;
	if ((s = inherit_from_run(c, err)) != FW_OK)
		return s;
	if ((s = fw_options_resolve(c->run, err)) != FW_OK)
		return s;
	for (int k = 1; k < FW_KIND_COUNT; k++)
		if (c->plugin[k] && (s = fw_options_resolve(c->plugin[k]->opts, err)) != FW_OK)
			return s;
	return FW_OK;
}

static enum fw_status apply_argv(struct config *c, int argc, char **argv, char **pos,
				 int max_pos, int *n_pos, struct fw_err *err)
{
	enum fw_status s;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		if (strncmp(a, "--", 2)) {
			if (*n_pos >= max_pos)
				return fw_errorf(err, FW_ERR_INVALID, "unexpected argument '%s'", a);
			pos[(*n_pos)++] = argv[i];
			continue;
		}
		char name[128];
		const char *eq = strchr(a, '='), *value;
		size_t nl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
		if (nl == 0 || nl >= sizeof(name))
			return fw_errorf(err, FW_ERR_INVALID, "malformed option '%s'", a);
		memcpy(name, a + 2, nl);
		name[nl] = '\0';
		if (!strcmp(name, "config") || !strcmp(name, "plugins")) {
			if (!eq)
				i++;
			continue;
		}
		if (eq) {
			value = eq + 1;
		} else if (!strncmp(name, "no-", 3) && is_bool(c, name + 3)) {
			memmove(name, name + 3, strlen(name + 3) + 1);
			value = "false";
		} else if (is_bool(c, name)) {
			value = "true";
		} else if (i + 1 < argc) {
			value = argv[++i];
		} else if (owner_of(c, name)) {
			return fw_errorf(err, FW_ERR_INVALID, "option '--%s' needs a value", name);
		} else {
			return unknown(c, name, "", err);
		}
		if ((s = set_flat(c, name, value, "", err)) != FW_OK)
			return s;
	}
	return FW_OK;
}

/* Which run options the user set, before checkpoints and defaults fill
 * the rest. */
static enum fw_status note_user_set(struct config *c, struct fw_err *err)
{
	int n = fw_options_count(c->run);
	free(c->user_set);
	if (!(c->user_set = calloc((size_t)n + 1, sizeof(bool))))
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	for (int i = 0; i < n; i++)
		c->user_set[i] = fw_options_has(c->run, fw_options_def(c->run, i)->name);
	return FW_OK;
}

bool config_user_set(const struct config *c, const char *name)
{
	for (int i = 0; c->user_set && i < fw_options_count(c->run); i++)
		if (!strcmp(fw_options_def(c->run, i)->name, name))
			return c->user_set[i];
	return false;
}

void config_free(struct config *c)
{
	free(c->user_set);
	fw_options_free(c->run);
	free(c->taken);
	for (int k = 1; k < FW_KIND_COUNT; k++)
		fw_plugin_close(c->plugin[k]);
	free(c->config_path);
	memset(c, 0, sizeof(*c));
}

/* --- dumping ------------------------------------------------------------------------ */

static void dump_options(FILE *f, const struct fw_options *o)
{
	for (int i = 0; i < fw_options_count(o); i++)
		fprintf(f, "%s = %s\n", fw_options_def(o, i)->name, fw_options_value(o, i));
}

char *config_dump(const struct config *c)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return NULL;
	fprintf(f, "# fwrun resolved configuration: every option with its value.\n"
		"# Reproduce the run with: fwrun train --config=THIS_FILE\n[run]\n");
	dump_options(f, c->run);
	for (int k = 1; k < FW_KIND_COUNT; k++) {
		if (!c->plugin[k])
			continue;
		fprintf(f, "\n[%s]\n# version %s, %s\n", c->plugin[k]->desc->name,
			c->plugin[k]->desc->version, c->plugin[k]->path);
		dump_options(f, c->plugin[k]->opts);
	}
	fclose(f);
	return buf;
}

/* --- fwrun CMD --help --------------------------------------------------------------------- */

static void print_options(const struct config *c, const struct fw_options *o, const char *cmd)
{
	for (int i = 0; i < fw_options_count(o); i++) {
		const struct fw_option_def *d = fw_options_def(o, i);
		if (option_applies(c, o, d->name, cmd))
			printf("  --%-24s %s (default: %s)\n", d->name, d->help ? d->help : "",
			       d->def ? d->def : "required");
	}
}

bool wants_help(int argc, char **argv)
{
	for (int i = 0; i < argc; i++)
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
			return true;
	return false;
}

int command_help(const char *cmd, const char *usage, int argc, char **argv)
{
	struct config c;
	struct fw_err err = { 0 };
	char *pos[8];
	int np;
	char **args = malloc(sizeof(char *) * (size_t)(argc + 1));
	int n = 0;
	for (int i = 0; args && i < argc; i++)
		if (strcmp(argv[i], "--help") && strcmp(argv[i], "-h"))
			args[n++] = argv[i];
	if (!args)
		return fail(FW_ERR_NOMEM, "out of memory");
	if (config_load(&c, NULL, n, args, false, pos, 8, &np, &err) != FW_OK) {
		config_free(&c);
		free(args);
		return fail(err.status, "%s", err.msg);
	}
	fputs(usage, stdout);
	printf("\nfwrun options for %s:\n", cmd);
	if (c.run) {
		print_options(&c, c.run, cmd);
		for (int k = 1; k < FW_KIND_COUNT; k++) {
			if (!c.plugin[k] || (k == FW_KIND_OPTIM && strcmp(cmd, "train") &&
					     strcmp(cmd, "plan")))
				continue;
			printf("\n%s options:\n", c.plugin[k]->desc->name);
			print_options(&c, c.plugin[k]->opts, cmd);
		}
	}
	config_free(&c);
	free(args);
	return EXIT_OK;
}
