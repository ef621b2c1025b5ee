/* tok.c - the run's tokenizer: from --tokenizer/--vocab-file/--merge-file
 * (a vocab-file without merge-file is a Hugging Face tokenizer.json of any
 * family fw's pipeline implements: BPE, WordPiece, Unigram; fw names those
 * "hf"),
 * or the one a checkpoint stores in its "tokenizer" attribute (the JSON text
 * of fw_tokenizer_serialize), so that a model is always read and written
 * with the tokenizer it was trained with. */
#include <stdlib.h>
#include <string.h>

#include "fwrun.h"

/* Whether stored is mine with special tokens appended (chatml's markers,
 * arch/encoder's [CLS] [SEP] [MASK] [PAD]): the same bytes for every id of
 * mine, only specials after. */
static bool extends(const struct fw_tokenizer *stored, const struct fw_tokenizer *mine)
{
	int32_t n = fw_tokenizer_vocab_size(mine), all = fw_tokenizer_vocab_size(stored);
	if (strcmp(fw_tokenizer_name(stored), fw_tokenizer_name(mine)) || all < n ||
	    fw_rt_tokenizer_fingerprint(stored, n) != fw_rt_tokenizer_fingerprint(mine, n))
		return false;
	for (int32_t id = n; id < all; id++)
		if (!fw_tokenizer_is_special(stored, id))
			return false;
	return true;
}

static struct fw_tokenizer *from_options(const struct fw_options *o, struct fw_err *err)
{
	const char *kind = fw_opt_str(o, "tokenizer");
	const char *vocab = fw_opt_str(o, "vocab-file"), *merges = fw_opt_str(o, "merge-file");
	if (!strcmp(kind, "gpt2") && !*vocab) {
		fw_errorf(err, FW_ERR_INVALID, "--tokenizer=gpt2 needs --vocab-file (vocab.json or "
			  "encoder.json, with --merge-file merges.txt or vocab.bpe; or a Hugging "
			  "Face tokenizer.json alone)");
		return NULL;
	}
	if (strcmp(kind, "gpt2") && (*vocab || *merges)) {
		fw_errorf(err, FW_ERR_INVALID, "--vocab-file and --merge-file go with "
			  "--tokenizer=gpt2, not --tokenizer=%s", kind);
		return NULL;
	}
	if (!strcmp(kind, "byte"))
		return fw_tokenizer_new_byte(NULL, 0, err);
	if (!strcmp(kind, "gpt2"))
		return *merges ? fw_tokenizer_load_bpe(vocab, merges, err) :
			fw_tokenizer_load_hf_json(vocab, err);
	return NULL;
}

struct fw_tokenizer *run_tokenizer(const struct fw_options *o, const char *ckpt,
				   struct fw_err *err)
{
	memset(err, 0, sizeof(*err));
	struct fw_tokenizer *opt = from_options(o, err);
	if (err->status || !ckpt || !*ckpt)
		return opt;
	char *stored = NULL;
	struct fw_err e = { 0 };
	if (fw_h5_read_attr(ckpt, TOKENIZER_ATTR, &stored, &e) != FW_OK) {
		if (e.status != FW_ERR_NOT_FOUND) {
			*err = e;
			fw_tokenizer_free(opt);
			return NULL;
		}
		return opt;              /* a file without one (an import): the options' */
	}
	struct fw_tokenizer *t = fw_tokenizer_deserialize(stored, strlen(stored), ckpt, err);
	if (t && opt) {
		char *mine = fw_tokenizer_serialize(opt, err);
		if (mine && strcmp(mine, stored) && !extends(t, opt))
			fw_errorf(err, FW_ERR_INVALID, "the --tokenizer/--vocab-file tokenizer (%s) "
				  "differs from the tokenizer stored in %s (%s); leave those options out "
				  "to use the stored one", fw_tokenizer_name(opt), ckpt,
				  fw_tokenizer_name(t));
		fw_free(mine);
		if (err->status) {
			fw_tokenizer_free(t);
			t = NULL;
		}
	}
	fw_tokenizer_free(opt);
	fw_free(stored);
	return t;
}
