/* chat_template_driver.c - fw's side of tests/chat_templates.py.
 *
 *   chat_template_driver TEMPLATE_FILE IN.jsonl OUT.jsonl
 *
 * Compiles the template, then for each line {"messages": [...],
 * "add_generation_prompt": bool, "vars": {...}} of IN writes one line to
 * OUT: {"out": text} or {"error": message}. A template that does not compile
 * gives {"error": ...} for every line. Exit 1 only when a file cannot be used.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fw/chat_template.h"

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: chat_template_driver TEMPLATE_FILE IN.jsonl OUT.jsonl\n");
		return 2;
	}
	FILE *tf = fopen(argv[1], "rb");
	if (!tf) {
		fprintf(stderr, "chat_template_driver: cannot open %s\n", argv[1]);
		return 1;
	}
	char *text = NULL;
	size_t len = 0;
	FILE *mem = open_memstream(&text, &len);
	char buf[4096];
	size_t n;
	while ((n = fread(buf, 1, sizeof buf, tf)) > 0)
		fwrite(buf, 1, n, mem);
	fclose(mem);
	fclose(tf);
	struct fw_err cerr = { 0 };
	struct fw_chat_template *t = fw_chat_template_compile(text, &cerr);
	free(text);
	FILE *in = fopen(argv[2], "r"), *out = fopen(argv[3], "w");
	if (!in || !out) {
		fprintf(stderr, "chat_template_driver: cannot open %s or %s\n", argv[2], argv[3]);
		return 1;
	}
	char *line = NULL;
	size_t cap = 0;
	int rc = 0;
	while (getline(&line, &cap, in) > 0) {
		json_error_t je;
		json_t *c = json_loads(line, 0, &je), *o = json_object();
		if (!c) {
			fprintf(stderr, "chat_template_driver: bad case line: %s\n", je.text);
			rc = 1;
			break;
		}
		if (!t) {
			json_object_set_new(o, "error", json_string(cerr.msg));
		} else {
			struct fw_err err = { 0 };
			char *s = fw_chat_template_render(t, json_object_get(c, "messages"),
							  json_is_true(json_object_get(c, "add_generation_prompt")),
							  json_object_get(c, "vars"), &err);
			if (s)
				json_object_set_new(o, "out", json_string(s));
			else
				json_object_set_new(o, "error", json_string(err.msg));
			fw_free(s);
		}
		char *js = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
		fprintf(out, "%s\n", js);
		free(js);
		json_decref(o);
		json_decref(c);
	}
	free(line);
	fclose(in);
	fclose(out);
	fw_chat_template_free(t);
	return rc;
}
