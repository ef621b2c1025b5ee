/* task_rows_driver.c - fw's side of the classification rows check in
 * tests/hf_tokenizer_pairs.py.
 *
 *   task_rows_driver TOKENIZER_JSON DATA.jsonl T OUT.jsonl
 *
 * Builds the sequence-classification rows of DATA ({"text", "text_pair",
 * "label"}) with fw_rt_task_open at --seq-length T and writes one line per
 * row, in order: {"ids": the tokens before the padding, "seg": their
 * segments (type id + 1), "pad_ok": every later position is padding}.
 */
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

#include "fw/runtime.h"

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: task_rows_driver TOKENIZER_JSON DATA.jsonl T OUT.jsonl\n");
		return 2;
	}
	struct fw_err err = { 0 };
	struct fw_tokenizer *tok = fw_tokenizer_load_hf_json(argv[1], &err);
	struct fw_rt_labels labels = { 0 };
	struct fw_rt_task task = { .kind = FW_RT_TASK_SEQ_CLS, .labels = &labels };
	struct fw_rt_loader l;
	int64_t T = atoll(argv[3]);
	if (!tok || fw_rt_specials_find(tok, &task.sp, &err) != FW_OK ||
	    fw_rt_task_open(&l, &task, argv[2], "data", tok, 1, T, false, 1, 0, NULL, &err) != FW_OK) {
		fprintf(stderr, "%s\n", err.msg);
		fw_tokenizer_free(tok);
		fw_rt_labels_free(&labels);
		return 1;
	}
	FILE *out = fopen(argv[4], "w");
	for (int64_t r = 0; out && r < l.rows.n; r++) {
		const int32_t *tk = l.rows.tokens + r * T, *sg = l.rows.seg + r * T;
		json_t *o = json_object(), *ids = json_array(), *seg = json_array();
		int64_t n = 0;
		while (n < T && sg[n] != 0)
			n++;
		bool pad_ok = true;
		for (int64_t k = 0; k < T; k++) {
			if (k < n) {
				json_array_append_new(ids, json_integer(tk[k]));
				json_array_append_new(seg, json_integer(sg[k]));
			} else {
				pad_ok = pad_ok && sg[k] == 0 && tk[k] == task.sp.pad;
			}
		}
		json_object_set_new(o, "ids", ids);
		json_object_set_new(o, "seg", seg);
		json_object_set_new(o, "pad_ok", json_boolean(pad_ok));
		char *txt = json_dumps(o, JSON_COMPACT);
		fprintf(out, "%s\n", txt ? txt : "{}");
		free(txt);
		json_decref(o);
	}
	if (out)
		fclose(out);
	fw_rt_loader_close(&l);
	fw_rt_labels_free(&labels);
	fw_tokenizer_free(tok);
	return out ? 0 : 1;
}
