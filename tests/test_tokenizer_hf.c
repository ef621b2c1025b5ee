/* test_tokenizer_hf.c - tokenizer.json through fw_tokenizer_load_hf_json: small
 * WordPiece, Unigram and SentencePiece-style BPE tokenizers with known ids,
 * added tokens, checkpoint serialisation, every refusal of a damaged or
 * unsupported file (one line naming the file and the component), mutated
 * files (never a crash), and injected allocation failures. The comparison
 * with Hugging Face's library on real tokenizers is tests/hf_tokenizers.py. */
#define _GNU_SOURCE
#include <check.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fw/tokenizer.h"
#include "harness.h"
#include "tokenizer_fixture.h"

static const char *write_json(const char *name, const char *text, size_t len)
{
	static char p[256];
	snprintf(p, sizeof(p), "%s/%s", root, name);
	FILE *f = fopen(p, "wb");
	ck_assert_ptr_nonnull(f);
	fwrite(text, 1, len, f);
	fclose(f);
	return p;
}

static struct fw_tokenizer *load_text(const char *text, struct fw_err *err)
{
	memset(err, 0, sizeof(*err));
	return fw_tokenizer_load_hf_json(write_json("tokenizer.json", text, strlen(text)), err);
}

static void ck_ids(struct fw_tokenizer *t, const char *text, unsigned flags, const int32_t *want,
		   size_t n)
{
	struct fw_err err = { 0 };
	struct fw_token_buf b = { 0 };
	ck_assert_msg(fw_tokenizer_encode_ex(t, text, strlen(text), flags, &b, &err) == FW_OK, "%s",
		      err.msg);
	char got[512] = "";
	for (size_t i = 0; i < b.n && strlen(got) < 480; i++)
		snprintf(got + strlen(got), sizeof(got) - strlen(got), " %d", b.ids[i]);
	ck_assert_msg(b.n == n, "'%s': %zu ids (%s), want %zu", text, b.n, got, n);
	for (size_t i = 0; i < n; i++)
		ck_assert_msg(b.ids[i] == want[i], "'%s': id %zu is %d, want %d (%s)", text, i,
			      b.ids[i], want[i], got);
	fw_token_buf_free(&b);
}

static void ck_decodes(struct fw_tokenizer *t, const int32_t *ids, size_t n, const char *want)
{
	struct fw_err err = { 0 };
	char *out = NULL;
	size_t len = 0;
	ck_assert_msg(fw_tokenizer_decode(t, ids, n, &out, &len, &err) == FW_OK, "%s", err.msg);
	ck_assert_msg(len == strlen(want) && !memcmp(out, want, len), "decoded '%s', want '%s'",
		      out, want);
	fw_free(out);
}

#define IDS(...) (const int32_t[]){ __VA_ARGS__ }, sizeof((int32_t[]){ __VA_ARGS__ }) / 4

/* --- small tokenizers --------------------------------------------------------------------- */

static const char bert_json[] =
	"{\"version\": \"1.0\", \"truncation\": null, \"padding\": null,"
	" \"added_tokens\": ["
	"  {\"id\": 0, \"content\": \"[UNK]\", \"special\": true, \"normalized\": false,"
	"   \"lstrip\": false, \"rstrip\": false, \"single_word\": false},"
	"  {\"id\": 1, \"content\": \"[CLS]\", \"special\": true},"
	"  {\"id\": 2, \"content\": \"[SEP]\", \"special\": true},"
	"  {\"id\": 9, \"content\": \"<ent>\", \"special\": false, \"single_word\": true,"
	"   \"normalized\": false}],"
	" \"normalizer\": {\"type\": \"BertNormalizer\", \"clean_text\": true,"
	"   \"handle_chinese_chars\": true, \"strip_accents\": null, \"lowercase\": true},"
	" \"pre_tokenizer\": {\"type\": \"BertPreTokenizer\"},"
	" \"post_processor\": {\"type\": \"BertProcessing\", \"sep\": [\"[SEP]\", 2],"
	"   \"cls\": [\"[CLS]\", 1]},"
	" \"decoder\": {\"type\": \"WordPiece\", \"prefix\": \"##\", \"cleanup\": true},"
	" \"model\": {\"type\": \"WordPiece\", \"unk_token\": \"[UNK]\","
	"   \"continuing_subword_prefix\": \"##\", \"max_input_chars_per_word\": 12,"
	"   \"vocab\": {\"[UNK]\": 0, \"[CLS]\": 1, \"[SEP]\": 2, \"un\": 3, \"##aff\": 4,"
	"     \"##able\": 5, \"hello\": 6, \",\": 7, \"!\": 8, \"中\": 10}}}";

static const char unigram_json[] =
	"{\"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \"special\": true}],"
	" \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFKC\"},"
	"   {\"type\": \"Replace\", \"pattern\": {\"Regex\": \" {2,}\"}, \"content\": \" \"}]},"
	" \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\","
	"   \"prepend_scheme\": \"always\", \"split\": true},"
	" \"post_processor\": {\"type\": \"TemplateProcessing\","
	"   \"single\": [{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}},"
	"     {\"SpecialToken\": {\"id\": \"<unk>\", \"type_id\": 0}}],"
	"   \"special_tokens\": {\"<unk>\": {\"id\": \"<unk>\", \"ids\": [0], \"tokens\": [\"<unk>\"]}}},"
	" \"decoder\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\","
	"   \"prepend_scheme\": \"always\", \"split\": true},"
	" \"model\": {\"type\": \"Unigram\", \"unk_id\": 0, \"byte_fallback\": false, \"vocab\": ["
	"   [\"<unk>\", 0], [\"\\u2581\", -2], [\"\\u2581he\", -1], [\"llo\", -1], [\"h\", -3],"
	"   [\"e\", -3], [\"l\", -3], [\"o\", -3], [\"\\u2581hello\", -1.5]]}}";

/* A SentencePiece-style BPE (Llama-2's layout): <unk> <s> </s>, the 256
 * <0xXX> tokens, then pieces. */
static char *llama_json(void)
{
	static char buf[16384];
	size_t n = 0;
	n += (size_t)snprintf(buf + n, sizeof(buf) - n,
		"{\"added_tokens\": [{\"id\": 1, \"content\": \"<s>\", \"special\": true,"
		" \"normalized\": false}],"
		" \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": ["
		"  {\"type\": \"Prepend\", \"prepend\": \"\\u2581\"},"
		"  {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}]},"
		" \"pre_tokenizer\": null,"
		" \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": ["
		"  {\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\","
		"  \"type_id\": 0}}], \"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [1],"
		"  \"tokens\": [\"<s>\"]}}},"
		" \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\","
		"  \"pattern\": {\"String\": \"\\u2581\"}, \"content\": \" \"}, {\"type\": \"ByteFallback\"},"
		"  {\"type\": \"Fuse\"}, {\"type\": \"Strip\", \"content\": \" \", \"start\": 1,"
		"  \"stop\": 0}]},"
		" \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true,"
		"  \"byte_fallback\": true, \"merges\": [\"\\u2581 h\", [\"\\u2581h\", \"i\"]],"
		"  \"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2");
	for (int b = 0; b < 256; b++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, ", \"<0x%02X>\": %d", b, 3 + b);
	snprintf(buf + n, sizeof(buf) - n, ", \"\\u2581\": 259, \"h\": 260, \"i\": 261,"
		 " \"\\u2581h\": 262, \"\\u2581hi\": 263}}}");
	return buf;
}

START_TEST(test_wordpiece)
{
	struct fw_err err;
	struct fw_tokenizer *t = load_text(bert_json, &err);
	ck_assert_msg(t != NULL, "%s", err.msg);
	ck_assert_str_eq(fw_tokenizer_name(t), "hf");
	ck_assert_int_eq(fw_tokenizer_kind(t), FW_TOKENIZER_HF);
	ck_assert_int_eq(fw_tokenizer_vocab_size(t), 11);
	ck_assert_int_eq(fw_tokenizer_eos(t), 2);                  /* [SEP] */
	ck_assert(fw_tokenizer_is_special(t, 1) && !fw_tokenizer_is_special(t, 9));
	/* lowercased, accents stripped, punctuation split, ## continuations */
	ck_ids(t, "UnAffable, H\xc3\xa9llo!", FW_TOKENIZE_SPLIT_SPECIAL, IDS(3, 4, 5, 7, 6, 8));
	ck_ids(t, "UnAffable, H\xc3\xa9llo!", FW_TOKENIZE_SPLIT_SPECIAL | FW_TOKENIZE_ADD_SPECIAL,
	       IDS(1, 3, 4, 5, 7, 6, 8, 2));
	ck_ids(t, "unaffable", 0, IDS(3, 4, 5));
	/* an unmatchable part or a word over 12 characters is [UNK]; CJK splits */
	ck_ids(t, "unxyz hello", 0, IDS(0, 6));
	ck_ids(t, "unaffableunaffable", 0, IDS(0));
	ck_ids(t, "hello\xe4\xb8\xad\xe4\xb8\xad", 0, IDS(6, 10, 10));
	/* specials split only with SPLIT_SPECIAL; <ent> is single_word */
	ck_ids(t, "hello[SEP]", FW_TOKENIZE_SPLIT_SPECIAL, IDS(6, 2));
	ck_ids(t, "hello[SEP]", 0, IDS(6, 0, 0, 0));
	ck_ids(t, "hello <ent> x<ent>", 0, IDS(6, 9, 0, 0, 0, 0));
	ck_decodes(t, IDS(1, 3, 4, 5, 7, 6, 8, 2), "[CLS] unaffable, hello! [SEP]");
	size_t len;
	const char *s = fw_tokenizer_token(t, 4, &len);
	ck_assert(len == 3 && !memcmp(s, "aff", 3));
	ck_assert_int_eq(fw_tokenizer_find(t, "##aff", 5), 4);
	fw_tokenizer_free(t);
}
END_TEST

START_TEST(test_unigram)
{
	struct fw_err err;
	struct fw_tokenizer *t = load_text(unigram_json, &err);
	ck_assert_msg(t != NULL, "%s", err.msg);
	ck_ids(t, "hello", 0, IDS(8));                          /* -1.5 beats -1 + -1 - ... */
	ck_ids(t, "hello!", 0, IDS(8, 0));                      /* ! is unk */
	ck_ids(t, "h\xc3\xa9llo", 0, IDS(1, 4, 0, 3));
	ck_ids(t, "hello  \xef\xbd\x88" "ello", FW_TOKENIZE_ADD_SPECIAL, IDS(8, 8, 0));  /* NFKC ｈ */
	ck_decodes(t, IDS(8, 0, 8), "hello<unk> hello");
	fw_tokenizer_free(t);
}
END_TEST

START_TEST(test_bpe_byte_fallback)
{
	struct fw_err err;
	struct fw_tokenizer *t = load_text(llama_json(), &err);
	ck_assert_msg(t != NULL, "%s", err.msg);
	ck_ids(t, "hi", 0, IDS(263));
	ck_ids(t, "hi \xc3\xa9", FW_TOKENIZE_SPLIT_SPECIAL, IDS(263, 259, 3 + 0xC3, 3 + 0xA9));
	ck_ids(t, "hi", FW_TOKENIZE_SPLIT_SPECIAL | FW_TOKENIZE_ADD_SPECIAL, IDS(1, 263));
	ck_ids(t, "<s>hi", FW_TOKENIZE_SPLIT_SPECIAL, IDS(1, 263));
	ck_decodes(t, IDS(263, 259, 3 + 0xC3, 3 + 0xA9), "hi \xc3\xa9");
	ck_decodes(t, IDS(263, 3 + 0xC3), "hi\xef\xbf\xbd");       /* a lone byte: U+FFFD */
	/* invalid UTF-8 input is encoded as U+FFFD (its bytes here) */
	ck_ids(t, "h\xff", 0, IDS(262, 3 + 0xEF, 3 + 0xBF, 3 + 0xBD));
	size_t len;
	const char *s = fw_tokenizer_token(t, 263, &len);           /* one token's bytes */
	ck_assert(len == 3 && !memcmp(s, " hi", 3));
	s = fw_tokenizer_token(t, 3 + 0xC3, &len);
	ck_assert(len == 1 && (unsigned char)s[0] == 0xC3);
	fw_tokenizer_free(t);
}
END_TEST

START_TEST(test_hf_serialize)
{
	const char *texts[] = { bert_json, unigram_json, llama_json() };
	for (int k = 0; k < 3; k++) {
		struct fw_err err;
		struct fw_tokenizer *t = load_text(texts[k], &err);
		ck_assert_msg(t != NULL, "%s", err.msg);
		int32_t im, again;
		ck_assert(fw_tokenizer_add_special(t, "<|im_start|>", 12, &im, &err) == FW_OK);
		ck_assert_int_eq(im, fw_tokenizer_vocab_size(t) - 1);
		ck_assert(fw_tokenizer_add_special(t, "<|im_start|>", 12, &again, &err) == FW_OK);
		ck_assert_int_eq(again, im);
		ck_assert(fw_tokenizer_is_special(t, im));
		char *ser = fw_tokenizer_serialize(t, &err);
		ck_assert_msg(ser != NULL, "%s", err.msg);
		struct fw_tokenizer *u = fw_tokenizer_deserialize(ser, strlen(ser), "ckpt.h5", &err);
		ck_assert_msg(u != NULL, "%s", err.msg);
		const char *text = "hello<|im_start|>hi unaffable";
		struct fw_token_buf a = { 0 }, b = { 0 };
		ck_assert(fw_tokenizer_encode(t, text, strlen(text), true, &a, &err) == FW_OK);
		ck_assert(fw_tokenizer_encode(u, text, strlen(text), true, &b, &err) == FW_OK);
		ck_assert(a.n == b.n && !memcmp(a.ids, b.ids, a.n * sizeof(int32_t)));
		bool found = false;
		for (size_t i = 0; i < a.n; i++)
			found = found || a.ids[i] == im;
		ck_assert(found);
		char *ser2 = fw_tokenizer_serialize(u, &err);
		ck_assert_str_eq(ser, ser2);
		ck_assert_int_eq(fw_tokenizer_eos(u), fw_tokenizer_eos(t));
		fw_free(ser);
		fw_free(ser2);
		fw_token_buf_free(&a);
		fw_token_buf_free(&b);
		fw_tokenizer_free(t);
		fw_tokenizer_free(u);
	}
}
END_TEST

/* --- refusals ------------------------------------------------------------------------------ */

/* bert_json with the text at `from` replaced by `to` (first occurrence);
 * malloc'd, kept in made[] until the test frees them. */
static char *made[64];
static int n_made;

static char *bert_with(const char *from, const char *to)
{
	const char *at = strstr(bert_json, from);
	ck_assert_msg(at != NULL, "'%s' not in bert_json", from);
	ck_assert(n_made < 64);
	char *buf = NULL;
	ck_assert(asprintf(&buf, "%.*s%s%s", (int)(at - bert_json), bert_json, to,
			   at + strlen(from)) > 0);
	return made[n_made++] = buf;
}

/* fw_tokenizer_encode_pair: BERT's pair layout and type ids (Hugging Face's
 * BertProcessing: [CLS] A [SEP] B:1 [SEP]:1), padding, refusals. The
 * reference library checks the rest (tests/hf_tokenizer_pairs.py). */
START_TEST(test_pairs)
{
	struct fw_err err;
	struct fw_tokenizer *t = load_text(bert_json, &err);
	ck_assert_msg(t != NULL, "%s", err.msg);
	ck_assert_int_eq(fw_tokenizer_n_added(t, false), 2);
	ck_assert_int_eq(fw_tokenizer_n_added(t, true), 3);
	struct fw_encode_options o = { .flags = FW_TOKENIZE_ADD_SPECIAL, .pad = true,
				       .pad_length = 9, .pad_id = 0, .pad_type_id = 0 };
	struct fw_encoding e = { 0 };
	ck_assert_int_eq(fw_tokenizer_encode_pair(t, "unaffable", 9, "hello !", 7, &o, &e, &err),
			 FW_OK);
	static const int32_t ids[] = { 1, 3, 4, 5, 2, 6, 8, 2, 0 };
	static const uint32_t ty[] = { 0, 0, 0, 0, 0, 1, 1, 1, 0 };
	static const uint8_t am[] = { 1, 1, 1, 1, 1, 1, 1, 1, 0 }, sm[] = { 1, 0, 0, 0, 1, 0, 0, 1, 1 };
	ck_assert_uint_eq(e.n, 9);
	ck_assert(!memcmp(e.ids, ids, sizeof(ids)) && !memcmp(e.type_ids, ty, sizeof(ty)) &&
		  !memcmp(e.attention_mask, am, sizeof(am)) &&
		  !memcmp(e.special_tokens_mask, sm, sizeof(sm)));
	/* longest_first to 6: 3 specials, 3 tokens left: "hello !" (2) cannot
	 * stay whole (the longer text never gets fewer), so 1 and 2, the odd
	 * one to the longer */
	o = (struct fw_encode_options){ .flags = FW_TOKENIZE_ADD_SPECIAL,
					.truncation = FW_TRUNCATE_LONGEST_FIRST, .max_length = 6 };
	ck_assert_int_eq(fw_tokenizer_encode_pair(t, "unaffable", 9, "hello !", 7, &o, &e, &err),
			 FW_OK);
	static const int32_t cut[] = { 1, 3, 4, 2, 6, 2 };
	ck_assert(e.n == 6 && !memcmp(e.ids, cut, sizeof(cut)));
	o.max_length = 2;                       /* below the 3 specials */
	ck_assert_int_eq(fw_tokenizer_encode_pair(t, "a", 1, "b", 1, &o, &e, &err), FW_ERR_INVALID);
	ck_one_line(err.msg);
	ck_has(err.msg, "max_length 2");
	ck_assert_uint_eq(e.n, 0);
	o.max_length = 4;
	o.truncation = FW_TRUNCATE_ONLY_SECOND;
	ck_assert_int_eq(fw_tokenizer_encode_pair(t, "hello hello", 11, NULL, 0, &o, &e, &err), FW_OK);
	o.max_length = 3;                       /* now it must cut, and has no second text */
	ck_assert_int_eq(fw_tokenizer_encode_pair(t, "hello hello", 11, NULL, 0, &o, &e, &err),
			 FW_ERR_INVALID);
	ck_has(err.msg, "only_second needs a second text");
	o.truncation = (enum fw_truncation)9;
	ck_assert_int_eq(fw_tokenizer_encode_pair(t, "a", 1, NULL, 0, &o, &e, &err), FW_ERR_INVALID);
	ck_assert_int_eq(fw_tokenizer_encode_pair(NULL, "a", 1, NULL, 0, NULL, &e, &err),
			 FW_ERR_INVALID);
	fw_encoding_free(&e);
	fw_tokenizer_free(t);
	/* a Sequence of two processors that add tokens: singles only */
	const char *bp = "{\"type\": \"BertProcessing\", \"sep\": [\"[SEP]\", 2],   \"cls\": "
			 "[\"[CLS]\", 1]}";
	char two[256];
	snprintf(two, sizeof(two), "{\"type\": \"Sequence\", \"processors\": [%s, %s]}", bp, bp);
	t = load_text(bert_with(bp, two), &err);
	ck_assert_msg(t != NULL, "%s", err.msg);
	ck_ids(t, "hello", FW_TOKENIZE_ADD_SPECIAL, IDS(1, 1, 6, 2, 2));
	ck_assert_int_eq(fw_tokenizer_n_added(t, true), -1);
	ck_assert_int_eq(fw_tokenizer_encode_pair(t, "a", 1, "b", 1, NULL, &e, &err),
			 FW_ERR_UNSUPPORTED);
	ck_one_line(err.msg);
	fw_tokenizer_free(t);
	/* no post-processor (the byte kind): the second text's type id is 1 */
	t = fw_tokenizer_new_byte(NULL, 0, &err);
	ck_assert_int_eq(fw_tokenizer_encode_pair(t, "ab", 2, "c", 1, NULL, &e, &err), FW_OK);
	ck_assert(e.n == 3 && e.ids[2] == 'c' && e.type_ids[1] == 0 && e.type_ids[2] == 1);
	fw_encoding_free(&e);
	fw_tokenizer_free(t);
	while (n_made > 0)
		free(made[--n_made]);
}
END_TEST

START_TEST(test_refusals)
{
	struct {
		const char *text, *has;
		enum fw_status st;
	} cases[] = {
		{ "", "not valid JSON", FW_ERR_FORMAT },
		{ "{\"model\": {", "not valid JSON", FW_ERR_FORMAT },
		{ "[]", "no \"model\" object", FW_ERR_FORMAT },
		{ "{\"model\": 3}", "no \"model\" object", FW_ERR_FORMAT },
		{ "{\"model\": {\"type\": \"WordLevel\", \"vocab\": {}}}", "model \"WordLevel\"",
		  FW_ERR_UNSUPPORTED },
		{ "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], \"dropout\": 0.1}}",
		  "dropout", FW_ERR_UNSUPPORTED },
		{ "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}",
		  "model.merges[0]: its right token", FW_ERR_FORMAT },
		{ "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [7]}}",
		  "model.merges[0] is neither", FW_ERR_FORMAT },
		{ "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a\"]}}",
		  "model.merges[0] is not \"A B\"", FW_ERR_FORMAT },
		{ "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 2}, \"merges\": []}}",
		  "no token has id 1", FW_ERR_FORMAT },
		{ "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}",
		  "token id -1", FW_ERR_FORMAT },
		{ "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\"]]}}", "[piece, score]",
		  FW_ERR_FORMAT },
		{ "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0]], \"unk_id\": 3}}",
		  "unk_id", FW_ERR_FORMAT },
		{ "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", "[piece, score]",
		  FW_ERR_FORMAT },
		{ "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}, \"unk_token\": \"[U]\"}}",
		  "unk_token", FW_ERR_FORMAT },
		{ bert_with("\"type\": \"BertNormalizer\"", "\"type\": \"Precompiled\""),
		  "normalizer \"Precompiled\"", FW_ERR_UNSUPPORTED },
		{ bert_with("\"type\": \"BertNormalizer\"", "\"typo\": 1"), "normalizer (no type)",
		  FW_ERR_UNSUPPORTED },
		{ bert_with("{\"type\": \"BertNormalizer\"", "{\"type\": \"Sequence\", \"normalizers\": "
			    "[{\"type\": \"NFC\"}, {\"type\": \"Nmt\"}]}, \"x\": {\"type\": \"NFC\""),
		  "normalizer \"Nmt\"", FW_ERR_UNSUPPORTED },
		{ bert_with("{\"type\": \"BertPreTokenizer\"}", "{\"type\": \"UnicodeScripts\"}"),
		  "pre-tokenizer \"UnicodeScripts\"", FW_ERR_UNSUPPORTED },
		{ bert_with("{\"type\": \"BertPreTokenizer\"}", "{\"type\": \"Split\", \"pattern\": "
			    "{\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}"),
		  "regular expression", FW_ERR_UNSUPPORTED },
		{ bert_with("{\"type\": \"BertPreTokenizer\"}", "{\"type\": \"Split\", \"pattern\": "
			    "{\"String\": \"a\"}, \"behavior\": \"Bogus\"}"),
		  "split behavior \"Bogus\"", FW_ERR_UNSUPPORTED },
		{ bert_with("{\"type\": \"BertPreTokenizer\"}", "{\"type\": \"Split\", \"pattern\": 3}"),
		  "pattern is neither", FW_ERR_FORMAT },
		{ bert_with("{\"type\": \"BertPreTokenizer\"}", "{\"type\": \"Metaspace\", "
			    "\"replacement\": \"\"}"), "one-character replacement", FW_ERR_FORMAT },
		{ bert_with("{\"type\": \"BertPreTokenizer\"}", "{\"type\": \"Metaspace\", "
			    "\"replacement\": \"_\", \"prepend_scheme\": \"sometimes\"}"),
		  "prepend_scheme \"sometimes\"", FW_ERR_UNSUPPORTED },
		{ bert_with("\"type\": \"WordPiece\", \"prefix\"", "\"type\": \"CTC\", \"prefix\""),
		  "decoder \"CTC\"", FW_ERR_UNSUPPORTED },
		{ bert_with("\"type\": \"BertProcessing\"", "\"type\": \"Magic\""),
		  "post_processor \"Magic\"", FW_ERR_UNSUPPORTED },
		{ bert_with("\"sep\": [\"[SEP]\", 2]", "\"sep\": [\"[SEP]\"]"), "cls and sep",
		  FW_ERR_FORMAT },
		{ bert_with("\"sep\": [\"[SEP]\", 2]", "\"sep\": [\"[SEP]\", 99]"),
		  "token id 99 is not in the vocabulary", FW_ERR_FORMAT },
		{ bert_with("\"type\": \"BertProcessing\"", "\"type\": \"TemplateProcessing\", "
			    "\"single\": [{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"pair\": "
			    "[{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"special_tokens\": {}"),
		  "\"pair\" has no $B", FW_ERR_FORMAT },
		{ bert_with("\"type\": \"BertProcessing\"", "\"type\": \"TemplateProcessing\", "
			    "\"single\": [{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"pair\": "
			    "[{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}, {\"SpecialToken\": "
			    "{\"id\": \"[X]\", \"type_id\": 1}}, {\"Sequence\": {\"id\": \"B\", "
			    "\"type_id\": 1}}], \"special_tokens\": {}"),
		  "pair[1] (\"[X]\") is not listed in special_tokens", FW_ERR_FORMAT },
		{ bert_with("\"type\": \"BertProcessing\"", "\"type\": \"TemplateProcessing\", "
			    "\"single\": [{\"Sequence\": {\"id\": \"C\", \"type_id\": 0}}]"),
		  "single[0] is sequence \"C\"", FW_ERR_FORMAT },
		{ bert_with("\"type\": \"BertProcessing\"", "\"type\": \"TemplateProcessing\", "
			    "\"single\": [{\"Sequence\": {\"id\": \"A\"}}]"),
		  "single[0] is not a Sequence or a SpecialToken with an id and a type_id",
		  FW_ERR_FORMAT },
		{ bert_with("\"truncation\": null", "\"truncation\": {\"max_length\": -5}"),
		  "truncation: needs max_length >= 0", FW_ERR_FORMAT },
		{ bert_with("\"truncation\": null", "\"truncation\": {\"max_length\": 5, "
			    "\"strategy\": \"Sideways\"}"),
		  "truncation: needs max_length >= 0, strategy", FW_ERR_FORMAT },
		{ bert_with("\"padding\": null", "\"padding\": {\"strategy\": \"Longest\"}"),
		  "padding: needs strategy", FW_ERR_FORMAT },
		{ bert_with("\"padding\": null", "\"padding\": {\"strategy\": {\"Fixed\": 4}, "
			    "\"direction\": \"Up\"}"),
		  "padding: needs strategy", FW_ERR_FORMAT },
		{ bert_with("{\"id\": 9, \"content\": \"<ent>\"", "{\"id\": 3, \"content\": \"<ent>\""),
		  "added_tokens[3] (id 3) is another token", FW_ERR_FORMAT },
		{ bert_with("{\"id\": 9, \"content\": \"<ent>\"", "{\"id\": \"9\", \"content\": \"<ent>\""),
		  "added_tokens[3] needs an id", FW_ERR_FORMAT },
		{ bert_with("\"added_tokens\": [", "\"added_tokens\": 5, \"x\": ["),
		  "added_tokens is not a list", FW_ERR_FORMAT },
		{ unigram_json + 0, NULL, FW_OK },
	};
	size_t nc = sizeof(cases) / sizeof(cases[0]);
	for (size_t i = 0; i + 1 < nc; i++) {
		struct fw_err err;
		struct fw_tokenizer *t = load_text(cases[i].text, &err);
		ck_assert_msg(t == NULL, "case %zu loaded (want '%s')", i, cases[i].has);
		ck_assert_msg(err.status == cases[i].st, "case %zu: %s, want %s: %s", i,
			      fw_status_str(err.status), fw_status_str(cases[i].st), err.msg);
		ck_one_line(err.msg);
		ck_has(err.msg, "tokenizer.json");
		ck_has(err.msg, cases[i].has);
	}
	while (n_made > 0)
		free(made[--n_made]);
	struct fw_err err = { 0 };
	const char *stored = "{\"kind\": \"hf\", \"specials\": []}";
	ck_assert_ptr_null(fw_tokenizer_deserialize(stored, strlen(stored), "ckpt.h5", &err));
	ck_one_line(err.msg);
	ck_has(err.msg, "ckpt.h5");
}
END_TEST

/* Mutated tokenizer.json files: loaded or refused in one line, never a crash
 * (ASan builds check memory too); what loads encodes and decodes. */
START_TEST(test_mutations)
{
	const char *base[] = { bert_json, unigram_json, llama_json() };
	unsigned seed = 12345;
	for (int it = 0; it < 3000; it++) {
		const char *src = base[it % 3];
		size_t n = strlen(src);
		char *m = malloc(n + 64);
		memcpy(m, src, n + 1);
		seed = seed * 1103515245u + 12345u;
		size_t at = (seed >> 8) % n;
		switch ((seed >> 4) % 4) {
		case 0:                                 /* truncate */
			m[at] = '\0';
			break;
		case 1:                                 /* flip a byte */
			m[at] = (char)(m[at] ^ (1 << ((seed >> 20) % 8)));
			break;
		case 2: {                               /* delete a stretch */
			size_t k = (seed >> 16) % 24;
			if (at + k > n)
				k = n - at;
			memmove(m + at, m + at + k, n - at - k + 1);
			break;
		}
		default:                                /* a digit or quote somewhere */
			m[at] = "0-9\"]}:, "[(seed >> 18) % 9];
		}
		struct fw_err err;
		size_t len = strlen(m);
		memset(&err, 0, sizeof(err));
		struct fw_tokenizer *t =
			fw_tokenizer_load_hf_json(write_json("mut.json", m, len), &err);
		if (!t) {
			ck_one_line(err.msg);
		} else {
			struct fw_token_buf b = { 0 };
			const char *text = "hello UnAffable, h\xc3\xa9llo! <s>hi  \xe4\xb8\xad \xff x";
			if (fw_tokenizer_encode_ex(t, text, strlen(text), 3, &b, &err) == FW_OK) {
				char *out = NULL;
				if (fw_tokenizer_decode(t, b.ids, b.n, &out, NULL, &err) == FW_OK)
					ck_assert_ptr_nonnull(out);
				fw_free(out);
			}
			fw_token_buf_free(&b);
			fw_tokenizer_free(t);
		}
		free(m);
	}
}
END_TEST

START_TEST(test_hf_alloc_fail)
{
	const char *texts[] = { bert_json, unigram_json, llama_json() };
	const char *in = "UnAffable, h\xc3\xa9llo! <s>hi hello  \xe4\xb8\xad hi\xff";
	for (int k = 0; k < 3; k++) {
		const char *path = write_json("a.json", texts[k], strlen(texts[k]));
		enum fw_status s = FW_ERR_NOMEM;
		int n;
		for (n = 1; n < 200000 && s != FW_OK; n++) {
			struct fw_err err = { 0 };
			fwt_fail_alloc_at(n);
			struct fw_tokenizer *t = fw_tokenizer_load_hf_json(path, &err);
			struct fw_token_buf b = { 0 };
			char *out = NULL, *ser = NULL;
			if (!t) {
				s = err.status;
			} else {
				s = fw_tokenizer_encode_ex(t, in, strlen(in), 3, &b, &err);
				if (s == FW_OK)
					s = fw_tokenizer_decode(t, b.ids, b.n, &out, NULL, &err);
				if (s == FW_OK)
					s = fw_tokenizer_add_special(t, "<x>", 3, NULL, &err);
				if (s == FW_OK && !(ser = fw_tokenizer_serialize(t, &err)))
					s = err.status;
				struct fw_encode_options o = { .flags = 3, .pad = true, .pad_length = 40,
							       .truncation = FW_TRUNCATE_LONGEST_FIRST,
							       .max_length = 30 };
				struct fw_encoding e = { 0 };
				if (s == FW_OK)
					s = fw_tokenizer_encode_pair(t, in, strlen(in),
						fw_tokenizer_n_added(t, true) >= 0 ? in : NULL, 9, &o, &e, &err);
				fw_encoding_free(&e);
			}
			fw_free(ser);
			fw_free(out);
			fw_token_buf_free(&b);
			fw_tokenizer_free(t);
			fwt_alloc_restore();
			ck_assert_msg(s == FW_OK || s == FW_ERR_NOMEM, "tokenizer %d, failing allocation "
				      "%d: %s: %s", k, n, fw_status_str(s), err.msg);
			ck_assert_msg(fwt_alloc_live() == 0, "tokenizer %d, failing allocation %d: %d "
				      "leaked", k, n, fwt_alloc_live());
			if (s != FW_OK)
				ck_one_line(err.msg);
		}
		ck_assert_msg(s == FW_OK, "never succeeded");
	}
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("tokenizer_hf");
	TCase *tc = fwt_tcase("pipeline", 60);
	tcase_add_unchecked_fixture(tc, setup_root, teardown_root);
	tcase_add_test(tc, test_wordpiece);
	tcase_add_test(tc, test_pairs);
	tcase_add_test(tc, test_unigram);
	tcase_add_test(tc, test_bpe_byte_fallback);
	tcase_add_test(tc, test_hf_serialize);
	suite_add_tcase(s, tc);
	tc = fwt_tcase("errors", 600);
	tcase_add_unchecked_fixture(tc, setup_root, teardown_root);
	tcase_add_test(tc, test_refusals);
	tcase_add_test(tc, test_mutations);
	tcase_add_test(tc, test_hf_alloc_fail);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return fwt_run_suite(suite());
}
