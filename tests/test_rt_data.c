/* test_rt_data.c - the runtime's data layout (fw/runtime/data.h): SFT rows
 * packed and padded with their targets and sequence ids, truncation, the
 * masks a segmented model takes, padding rows at the end of an epoch, the
 * seeded order of a token stream and resuming it, JSONL records and the log
 * of skipped ones, prompt/response records through the byte tokenizer. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "harness.h"
#include "fw/runtime.h"

/* An example from ids and loss flags (copied into malloc'd arrays). */
static struct fw_rt_example ex_of(const int32_t *ids, const uint8_t *loss, int64_t n)
{
	struct fw_rt_example e = { malloc(sizeof(int32_t) * (size_t)n), malloc((size_t)n), n };
	memcpy(e.ids, ids, sizeof(int32_t) * (size_t)n);
	memcpy(e.loss, loss, (size_t)n);
	return e;
}

static void check_row(const struct fw_rt_rows *r, int64_t row, const int32_t *tok,
		      const int32_t *tgt, const int32_t *seg)
{
	for (int64_t i = 0; i < r->T; i++) {
		int64_t at = row * r->T + i;
		ck_assert_msg(r->tokens[at] == tok[i] && r->targets[at] == tgt[i] &&
			      r->seg[at] == seg[i], "row %lld position %lld: token %d target %d seg "
			      "%d, want %d %d %d", (long long)row, (long long)i, r->tokens[at],
			      r->targets[at], r->seg[at], tok[i], tgt[i], seg[i]);
	}
}

static void rows_free(struct fw_rt_rows *r)
{
	free(r->tokens);
	free(r->targets);
	free(r->seg);
}

/* A: 3 positions (loss on the last two targets), B: 2, C: 5; T = 6. */
static void three(struct fw_rt_example *ex)
{
	ex[0] = ex_of((int32_t[]){ 1, 2, 3, 4 }, (uint8_t[]){ 0, 0, 1, 1 }, 4);
	ex[1] = ex_of((int32_t[]){ 5, 6, 7 }, (uint8_t[]){ 0, 1, 1 }, 3);
	ex[2] = ex_of((int32_t[]){ 8, 9, 10, 11, 12, 13 }, (uint8_t[]){ 1, 1, 1, 1, 1, 1 }, 6);
}

START_TEST(test_layout_packed_and_padded)
{
	struct fw_rt_example ex[3];
	struct fw_rt_rows r;
	struct fw_rt_layout_stats ls = { 0 };
	struct fw_err err = { 0 };
	three(ex);
	ck_assert_int_eq(fw_rt_rows_layout(ex, 3, 6, true, true, false, 1, &r, &ls, &err), FW_OK);
	ck_assert_int_eq(r.n, 2);                 /* A and B share a row, C needs a new one */
	check_row(&r, 0, (int32_t[]){ 1, 2, 3, 5, 6, 0 }, (int32_t[]){ -1, 3, 4, 6, 7, -1 },
		  (int32_t[]){ 1, 1, 1, 2, 2, 0 });
	check_row(&r, 1, (int32_t[]){ 8, 9, 10, 11, 12, 0 },
		  (int32_t[]){ 9, 10, 11, 12, 13, -1 }, (int32_t[]){ 1, 1, 1, 1, 1, 0 });
	ck_assert_int_eq(ls.rows, 2);
	ck_assert_int_eq(ls.loss_positions, 2 + 2 + 5);
	rows_free(&r);

	memset(&ls, 0, sizeof(ls));
	ck_assert_int_eq(fw_rt_rows_layout(ex, 3, 6, false, true, false, 1, &r, &ls, &err), FW_OK);
	ck_assert_int_eq(r.n, 3);                 /* padded: one example a row */
	check_row(&r, 1, (int32_t[]){ 5, 6, 0, 0, 0, 0 }, (int32_t[]){ 6, 7, -1, -1, -1, -1 },
		  (int32_t[]){ 1, 1, 0, 0, 0, 0 });
	rows_free(&r);
	for (int i = 0; i < 3; i++)
		fw_rt_example_free(&ex[i]);
}
END_TEST

/* Longer than T + 1: cut when a loss token is left within T, else dropped;
 * with truncate off, dropped. */
START_TEST(test_layout_too_long)
{
	struct fw_rt_example ex[2];
	struct fw_rt_rows r;
	struct fw_rt_layout_stats ls = { 0 };
	struct fw_err err = { 0 };
	ex[0] = ex_of((int32_t[]){ 1, 2, 3, 4, 5, 6 }, (uint8_t[]){ 0, 1, 1, 1, 1, 1 }, 6);
	ex[1] = ex_of((int32_t[]){ 7, 8, 9, 10, 11, 12 }, (uint8_t[]){ 0, 0, 0, 0, 1, 1 }, 6);
	ck_assert_int_eq(fw_rt_rows_layout(ex, 2, 3, true, true, false, 1, &r, &ls, &err), FW_OK);
	ck_assert_int_eq(r.n, 1);
	ck_assert_int_eq(ls.truncated, 1);
	ck_assert_int_eq(ls.dropped, 1);          /* its loss starts after position 3 */
	check_row(&r, 0, (int32_t[]){ 1, 2, 3 }, (int32_t[]){ 2, 3, 4 }, (int32_t[]){ 1, 1, 1 });
	rows_free(&r);
	memset(&ls, 0, sizeof(ls));
	ck_assert_int_eq(fw_rt_rows_layout(ex, 2, 3, true, false, false, 1, &r, &ls, &err), FW_OK);
	ck_assert_int_eq(r.n, 0);
	ck_assert_int_eq(ls.dropped, 2);
	rows_free(&r);
	for (int i = 0; i < 2; i++)
		fw_rt_example_free(&ex[i]);
}
END_TEST

/* Positions restart per sequence; a query sees keys of its own sequence
 * only; padding sees nothing. */
START_TEST(test_masks)
{
	enum { T = 6 };
	const int32_t seg[T] = { 1, 1, 1, 2, 2, 0 };
	int32_t pos[T];
	float bias[T * T];
	fw_rt_data_masks(seg, 1, T, pos, bias);
	const int32_t want[T] = { 0, 1, 2, 0, 1, 0 };
	for (int q = 0; q < T; q++) {
		ck_assert_int_eq(pos[q], want[q]);
		for (int k = 0; k < T; k++) {
			bool see = seg[q] && seg[k] == seg[q];
			ck_assert_msg(see ? bias[q * T + k] == 0.0f : isinf(bias[q * T + k]) &&
				      bias[q * T + k] < 0, "bias[%d][%d] = %g", q, k, bias[q * T + k]);
		}
	}
}
END_TEST

/* Rows in micro-batches of 4: the last one is filled up with padding rows;
 * the next call starts the next epoch. */
START_TEST(test_loader_rows_fill)
{
	struct fw_rt_example ex[3];
	struct fw_rt_rows r;
	struct fw_rt_layout_stats ls = { 0 };
	struct fw_rt_loader l;
	struct fw_err err = { 0 };
	three(ex);
	ck_assert_int_eq(fw_rt_rows_layout(ex, 3, 6, true, true, false, 1, &r, &ls, &err), FW_OK);
	ck_assert_int_eq(fw_rt_loader_from_rows(&l, &r, 4, false, 1, &err), FW_OK);
	ck_assert_ptr_null(r.tokens);             /* taken over */
	ck_assert_int_eq(l.n_micro, 1);
	int32_t tok[24], tgt[24], seg[24];
	fw_rt_loader_next(&l, tok, tgt, seg);
	ck_assert_int_eq(tgt[1], 3);
	for (int i = 12; i < 24; i++)
		ck_assert(tok[i] == 0 && tgt[i] == -1 && seg[i] == 0);
	ck_assert_int_eq(fw_rt_loader_left(&l), 0);
	fw_rt_loader_next(&l, tok, tgt, seg);
	ck_assert_int_eq(l.epoch, 1);
	fw_rt_loader_close(&l);
	for (int i = 0; i < 3; i++)
		fw_rt_example_free(&ex[i]);
}
END_TEST

/* A stream of 101 tokens in micro-batches of 2 x 5: ten a epoch; in order
 * without shuffling; shuffled, the order follows the seed and a seek to
 * (epoch, cursor) gives back exactly what came there. */
START_TEST(test_loader_stream_order)
{
	struct fw_rt_loader a, b;
	struct fw_err err = { 0 };
	uint32_t *s1 = malloc(sizeof(uint32_t) * 101), *s2 = malloc(sizeof(uint32_t) * 101);
	for (uint32_t i = 0; i < 101; i++)
		s1[i] = s2[i] = i;
	ck_assert_int_eq(fw_rt_loader_from_stream(&a, "s", s1, 101, 2, 5, false, 1, &err), FW_OK);
	ck_assert_int_eq(a.n_micro, 10);
	int32_t tok[10], tgt[10], seg[10];
	fw_rt_loader_next(&a, tok, tgt, seg);
	for (int i = 0; i < 10; i++)
		ck_assert(tok[i] == i && tgt[i] == i + 1 && seg[i] == 1);
	fw_rt_loader_close(&a);

	s1 = malloc(sizeof(uint32_t) * 101);
	for (uint32_t i = 0; i < 101; i++)
		s1[i] = i;
	ck_assert_int_eq(fw_rt_loader_from_stream(&a, "s", s1, 101, 2, 5, true, 7, &err), FW_OK);
	ck_assert_int_eq(fw_rt_loader_from_stream(&b, "s", s2, 101, 2, 5, true, 7, &err), FW_OK);
	int32_t first[25];
	bool shuffled = false;
	for (int k = 0; k < 25; k++) {            /* two and a half epochs */
		fw_rt_loader_next(&a, tok, tgt, NULL);
		first[k] = tok[0];
		shuffled |= k < 10 && tok[0] != 10 * k;
	}
	ck_assert(shuffled);
	fw_rt_loader_seek(&b, 2, 3);              /* where the 24th micro-batch came from */
	fw_rt_loader_next(&b, tok, tgt, NULL);
	ck_assert_int_eq(tok[0], first[23]);
	fw_rt_loader_close(&a);
	fw_rt_loader_close(&b);
}
END_TEST

struct lines {
	char text[8][256];
	int n;
};

static void collect(void *user, enum fw_log_level level, const char *line)
{
	struct lines *l = user;
	ck_assert_int_eq(level, FW_LOG_WARN);
	if (l->n < 8)
		snprintf(l->text[l->n++], sizeof(l->text[0]), "%s", line);
}

static enum fw_status count_ok(void *arg, const void *rec, long line, const char **why,
			       struct fw_err *err)
{
	if (!json_object_get((json_t *)rec, "text"))
		*why = "no 'text'";
	else
		++*(int *)arg;
	return FW_OK;
}

START_TEST(test_jsonl_log)
{
	char path[] = "/tmp/fw_rt_data.XXXXXX";
	int fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	const char text[] = "{\"text\": \"a\"}\n\n{oops\n{\"x\": 1}\n{\"text\": \"b\"}\n";
	ck_assert_int_eq(write(fd, text, sizeof(text) - 1), (ssize_t)sizeof(text) - 1);
	close(fd);
	struct lines seen = { 0 };
	struct fw_rt_log log = { collect, &seen };
	struct fw_err err = { 0 };
	int ok = 0;
	int64_t bad = 0;
	ck_assert_int_eq(fw_rt_jsonl_foreach(path, 5, &bad, count_ok, &ok, &log, &err), FW_OK);
	ck_assert_int_eq(ok, 2);
	ck_assert_int_eq(bad, 2);
	ck_assert_int_eq(seen.n, 2);
	char want[300];
	snprintf(want, sizeof(want), "%s:3: invalid JSON", path);
	ck_assert_msg(!strncmp(seen.text[0], want, strlen(want)), "%s", seen.text[0]);
	snprintf(want, sizeof(want), "%s:4: no 'text' (record skipped)", path);
	ck_assert_str_eq(seen.text[1], want);
	/* one bad record too many stops, naming the line and the count */
	bad = 0;
	ck_assert_int_eq(fw_rt_jsonl_foreach(path, 1, &bad, count_ok, &ok, NULL, &err),
			 FW_ERR_FORMAT);
	ck_assert_ptr_nonnull(strstr(err.msg, ":4: no 'text'"));
	unlink(path);
}
END_TEST

/* {"prompt", "response"}: prompt bytes outside the loss, response bytes and
 * EOS in it. */
START_TEST(test_prompt_response)
{
	struct fw_err err = { 0 };
	struct fw_tokenizer *tok = fw_tokenizer_new_byte(NULL, 0, &err);
	ck_assert_msg(tok != NULL, "%s", err.msg);
	struct fw_rt_encoder enc;
	ck_assert_int_eq(fw_rt_encoder_init(&enc, tok, false, &err), FW_OK);
	json_t *rec = json_pack("{s:s, s:s}", "prompt", "ab", "response", "c");
	struct fw_rt_example ex;
	const char *why = NULL;
	ck_assert_msg(fw_rt_example_from_json(&enc, rec, &ex, &why), "%s", why);
	int32_t eos = fw_tokenizer_eos(tok);
	ck_assert_int_eq(ex.n, 4);
	const int32_t ids[4] = { 'a', 'b', 'c', eos };
	const uint8_t loss[4] = { 0, 0, 1, 1 };
	for (int i = 0; i < 4; i++)
		ck_assert(ex.ids[i] == ids[i] && ex.loss[i] == loss[i]);
	fw_rt_example_free(&ex);
	json_decref(rec);
	rec = json_pack("{s:s}", "prompt", "ab");
	ck_assert(!fw_rt_example_from_json(&enc, rec, &ex, &why));
	ck_assert_str_eq(why, "'response' is missing");
	json_decref(rec);
	/* chatml adds its two special tokens */
	ck_assert_int_eq(fw_rt_encoder_init(&enc, tok, true, &err), FW_OK);
	ck_assert(enc.im_start >= 256 && enc.im_end >= 256 && enc.im_start != enc.im_end);
	fw_tokenizer_free(tok);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("rt_data");
	TCase *tc = fwt_tcase("data", 60);
	tcase_add_test(tc, test_layout_packed_and_padded);
	tcase_add_test(tc, test_layout_too_long);
	tcase_add_test(tc, test_masks);
	tcase_add_test(tc, test_loader_rows_fill);
	tcase_add_test(tc, test_loader_stream_order);
	tcase_add_test(tc, test_jsonl_log);
	tcase_add_test(tc, test_prompt_response);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
