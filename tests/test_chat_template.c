/* test_chat_template.c - the Jinja interpreter of fw/chat_template.h: small
 * renders with known text, HF's whitespace handling, syntax errors and
 * runtime errors (one line with the position), raise_exception's message,
 * malformed messages, and mutated templates (never a crash; no leak under
 * ASan). The comparison with @huggingface/jinja on real templates is
 * tests/chat_templates.py. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/chat_template.h"
#include "harness.h"

#define ck_one_line(msg)                                                                  \
	do {                                                                              \
		ck_assert_msg((msg)[0] != 0, "empty error message");                      \
		ck_assert_msg(strchr((msg), '\n') == NULL, "message not one line: %s", (msg)); \
	} while (0)

static const char *CONV = "[{\"role\": \"system\", \"content\": \"Be brief.\"},"
			  " {\"role\": \"user\", \"content\": \" hi \"},"
			  " {\"role\": \"assistant\", \"content\": \"h\\u00e9llo\"}]";

/* renders text with CONV; returns the fw_malloc'd result or NULL with err */
static char *render(const char *text, const char *msgs, bool agp, const char *extra, struct fw_err *err)
{
	memset(err, 0, sizeof(*err));
	struct fw_chat_template *t = fw_chat_template_compile(text, err);
	if (!t)
		return NULL;
	char *s = fw_chat_template_render_json(t, msgs, agp, extra, err);
	fw_chat_template_free(t);
	return s;
}

static void ck_render(const char *text, bool agp, const char *want)
{
	struct fw_err err;
	char *s = render(text, CONV, agp, "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}", &err);
	ck_assert_msg(s != NULL, "%s: %s", text, err.msg);
	ck_assert_msg(!strcmp(s, want), "%s:\n got  [%s]\n want [%s]", text, s, want);
	fw_free(s);
}

static void ck_error(const char *text, const char *msgs, const char *want_part)
{
	struct fw_err err;
	char *s = render(text, msgs, false, NULL, &err);
	ck_assert_msg(s == NULL, "%s: rendered [%s]", text, s ? s : "");
	ck_one_line(err.msg);
	ck_assert_msg(strstr(err.msg, "chat template: line ") != NULL, "%s: no position: %s", text,
		      err.msg);
	ck_assert_msg(strstr(err.msg, want_part) != NULL, "%s: [%s] lacks [%s]", text, err.msg,
		      want_part);
}

START_TEST(test_render)
{
	ck_render("{% for m in messages %}<{{ m.role }}>{{ m['content'] | trim }}{% endfor %}", false,
		  "<system>Be brief.<user>hi<assistant>h\xc3\xa9llo");
	ck_render("{{ bos_token }}{% if add_generation_prompt %}GO{% else %}NO{% endif %}", true, "<s>GO");
	/* trim_blocks and lstrip_blocks, the final newline dropped */
	ck_render("a\n  {% if true %}\nb\n  {% endif %}\nc\n", false, "a\nb\nc");
	ck_render("a  {{- ' x ' -}}  b", false, "a x b");
	ck_render("{# note #}x{#- y -#}  z", false, "xz");
	ck_render("{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}"
		  "{{ loop.last }}{{ loop.length }};{% endfor %}", false,
		  "10truefalse3;21falsefalse3;32falsetrue3;");
	ck_render("{% for m in [] %}x{% else %}empty{% endfor %}", false, "empty");
	ck_render("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
		  "{% endfor %}{{ ns.n }}", false, "3");
	ck_render("{% for m in messages[1:] %}{{ m.role[0] }}{% endfor %}{{ messages[-1].role }}", false,
		  "uaassistant");
	ck_render("{{ messages[::-1] | map_missing if false else (messages | length) }}", false, "3");
	ck_render("{{ 'a' ~ 1 ~ undefined_x }}|{{ 7 // 2 }}|{{ 7 % 3 }}|{{ 7 / 2 }}|{{ 2 ** 3 }}|{{ -3 + 1 }}",
		  false, "a1|3|1|3.5|8|-2");
	ck_render("{{ 'x' in 'xyz' }}{{ 'q' not in ['q'] }}{{ 'role' in messages[0] }}", false,
		  "truefalsetrue");
	ck_render("{{ undefined_name is defined }}{{ none is none }}{{ 'a' is string }}"
		  "{{ 1 is number }}{{ [] is iterable }}{{ {} is mapping }}{{ 3 is odd }}", false,
		  "falsetruetruetruetruetruetrue");
	ck_render("{{ {'b': [1, 2.5, true, none, '\xc3\xa9\"']} | tojson }}", false,
		  "{\"b\": [1, 2.5, true, null, \"\xc3\xa9\\\"\"]}");
	ck_render("{{ [1, {'a': 2}] | tojson(indent=2) }}", false, "[\n  1,\n  {\n    \"a\": 2\n  }\n]");
	ck_render("{{ ' Ab c '.strip() }}|{{ 'a,b,,c'.split(',') | join('-') }}|{{ 'a b'.split() | length }}"
		  "|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}|{{ 'aXa'.replace('a', 'b') }}"
		  "|{{ 'Hi'.upper() }}{{ 'Hi' | lower }}", false, "Ab c|a-b--c|2|truetrue|bXb|HIhi");
	ck_render("{{ {'k': 1}.get('k') }}{{ {'k': 1}.get('z', 5) }}{% for k, v in {'a': 1}.items() %}"
		  "{{ k }}={{ v }}{% endfor %}", false, "15a=1");
	ck_render("{{ x | default('d') }}{{ messages | first | tojson }}", false,
		  "d{\"role\": \"system\", \"content\": \"Be brief.\"}");
	ck_render("{% macro t(a, b='B') %}[{{ a }}{{ b }}]{% endmacro %}{{ t(1) }}{{ t(2, b=3) }}", false,
		  "[1B][23]");
	ck_render("{% set x %}in{{ 1 }}{% endset %}{{ x }}|{{ '1' | int + 1 }}|{{ 3 | string }}", false,
		  "in1|2|3");
	ck_render("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}"
		  "{% break %}{% endif %}{{ i }}{% endfor %}", false, "02");
	ck_render("{{ 'yes' if messages else 'no' }}{{ 'a' if false }}|", false, "yes|");
	/* @huggingface/jinja's number and none printing */
	ck_render("{{ 1.0 }} {{ 2.50 }} {{ 1.0 ~ '' }} {{ [1.0, none] }} {{ none }}|{{ true }}", false,
		  "1.0 2.5 1 [1, null] |true");
}
END_TEST

START_TEST(test_syntax_errors)
{
	static const struct {
		const char *text, *part;
	} bad[] = {
		{ "{% if x %}a", "endif" },
		{ "{% for x in y %}", "endfor" },
		{ "{% for x y %}{% endfor %}", "'in'" },
		{ "{{ 'abc }}", "unterminated string" },
		{ "{{ 1 + }}", "expected an expression" },
		{ "{{ x", "end of template" },
		{ "{% endif %}", "endif" },
		{ "{% bogus %}", "bogus" },
		{ "{# open comment", "comment" },
		{ "{{ a[ }}", "" },
		{ "{{ f(1, }}", "" },
		{ "{{ (1 }}", "')'" },
		{ "{{ 'a\\q' }}", "escaped" },
		{ "{{ a ? b }}", "unexpected character" },
		{ "{% set %}", "name" },
		{ "{% macro m(1) %}{% endmacro %}", "names" },
		{ "line1\nline2 {{ } }}", "line 2" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		struct fw_err err = { 0 };
		struct fw_chat_template *t = fw_chat_template_compile(bad[i].text, &err);
		ck_assert_msg(t == NULL, "%s: compiled", bad[i].text);
		ck_assert_int_eq(err.status, FW_ERR_FORMAT);
		ck_one_line(err.msg);
		ck_assert_msg(strstr(err.msg, bad[i].part), "%s: [%s] lacks [%s]", bad[i].text, err.msg,
			      bad[i].part);
	}
	/* nesting beyond the limit is an error, not a stack overflow */
	char deep[4200];
	size_t k = 0;
	k += (size_t)snprintf(deep + k, sizeof deep - k, "{{ ");
	for (int i = 0; i < 1000; i++)
		deep[k++] = '(';
	deep[k++] = '1';
	for (int i = 0; i < 1000; i++)
		deep[k++] = ')';
	snprintf(deep + k, sizeof deep - k, " }}");
	struct fw_err err = { 0 };
	ck_assert_ptr_null(fw_chat_template_compile(deep, &err));
	ck_assert_msg(strstr(err.msg, "too deeply"), "%s", err.msg);
}
END_TEST

START_TEST(test_runtime_errors)
{
	ck_error("{{ raise_exception('Roles must alternate') }}", CONV, "Roles must alternate");
	ck_error("x\n{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}"
		 "{% endif %}", CONV, "line 2");
	ck_error("{{ messages[0].content + none }}", CONV, "null");
	ck_error("{{ nothing.attr }}", CONV, "undefined");
	ck_error("{{ 1 / 0 }}", CONV, "division by zero");
	ck_error("{{ messages | nosuchfilter }}", CONV, "nosuchfilter");
	ck_error("{{ x is nosuchtest }}", CONV, "nosuchtest");
	ck_error("{{ 'a'.nosuchmethod() }}", CONV, "nosuchmethod");
	ck_error("{% for x in 5 %}{% endfor %}", CONV, "iterate");
	ck_error("{{ messages['a':] }}", CONV, "slice");
	ck_error("{{ nofunc(1) }}", CONV, "not a function");
	ck_error("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", CONV, "too deeply");
	ck_error("{{ messages | join(',', attribute='role') }}", CONV, "attribute= is not supported");
	ck_error("{{ [1, 'a'] | sort }}", CONV, "sort: cannot compare");
	ck_error("{{ [[1], [2]] | sort }}", CONV, "sort: cannot compare");
	ck_error("{{ [1, 2] | sort(reverse='yes') }}", CONV, "must be booleans");
	ck_error("{% for m in messages %}{{ m.content | trim }}{% endfor %}",
		 "[{\"role\": \"user\", \"content\": [1]}]", "trim");
}
END_TEST

START_TEST(test_malformed_inputs)
{
	struct fw_err err = { 0 };
	struct fw_chat_template *t = fw_chat_template_compile("{{ messages | length }}", &err);
	ck_assert_ptr_nonnull(t);
	static const char *msgs[] = { "", "[", "{\"a\": 1}", "nul", "[{\"role\": ]", "\xff" };
	for (size_t i = 0; i < sizeof(msgs) / sizeof(*msgs); i++) {
		memset(&err, 0, sizeof err);
		ck_assert_ptr_null(fw_chat_template_render_json(t, msgs[i], false, NULL, &err));
		ck_one_line(err.msg);
	}
	memset(&err, 0, sizeof err);
	ck_assert_ptr_null(fw_chat_template_render_json(t, "[]", false, "[1]", &err));
	ck_one_line(err.msg);
	ck_assert_ptr_null(fw_chat_template_render_json(t, "[]", false, "{", &err));
	ck_assert_ptr_null(fw_chat_template_render(t, NULL, false, NULL, &err));
	char *s = fw_chat_template_render_json(t, "[1, null, \"x\"]", true, NULL, &err);
	ck_assert_str_eq(s, "3");
	fw_free(s);
	fw_chat_template_free(t);
	fw_chat_template_free(NULL);
	/* an empty or NULL template renders nothing */
	s = render("", "[]", false, NULL, &err);
	ck_assert_str_eq(s, "");
	fw_free(s);
	t = fw_chat_template_compile(NULL, &err);
	ck_assert_ptr_nonnull(t);
	fw_chat_template_free(t);
}
END_TEST

/* Random edits of a real-looking template: compile and render must return
 * text or one line of error, never crash. */
START_TEST(test_mutations)
{
	static const char *base =
		"{%- if tools %}{{- '<|im_start|>system\\n' }}{%- for tool in tools %}{{- tool | tojson }}"
		"{%- endfor %}{%- endif %}\n"
		"{%- set ns = namespace(last=messages|length - 1) %}\n"
		"{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
		"{%- if message.role == 'user' and not message.content.startswith('<x>') %}"
		"{%- set ns.last = index %}{%- endif %}{%- endfor %}\n"
		"{% macro t(r, c='') %}<{{ r|upper }}>{{ c|trim }}{% endmacro %}\n"
		"{%- for message in messages %}\n"
		"  {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
		"{{ raise_exception('alternate') }}{% endif %}\n"
		"  {{- t(message.role, message.content) ~ (' ' if loop.last else '\\n') }}"
		"{{ message.get('x', {'a': [1, 2.5]}) | tojson(indent=1) }}\n"
		"  {%- if '</think>' in message.content %}{{ message.content.split('</think>')[-1].lstrip() }}"
		"{% endif %}\n"
		"{%- else %}none{%- endfor %}\n"
		"{%- if add_generation_prompt %}{{ bos_token ~ '<|im_start|>assistant\\n' }}{%- endif %}\n";
	static const char alphabet[] = "{}%#-+*/|.,:()[]'\"=<>~! \n\tabcxyz019_";
	const char *msgs = "[{\"role\": \"user\", \"content\": \"a</think>b\"},"
			   " {\"role\": \"assistant\", \"content\": \"ok\"}]";
	struct fwt_rng rng = fwt_rng_new(7);
	size_t n = strlen(base);
	char *buf = malloc(n + 64);
	int rendered = 0;
	for (int it = 0; it < 3000; it++) {
		memcpy(buf, base, n + 1);
		size_t len = n;
		int edits = 1 + (int)(fwt_rng_u64(&rng) % 4);
		for (int e = 0; e < edits; e++) {
			size_t at = fwt_rng_u64(&rng) % len;
			switch (fwt_rng_u64(&rng) % 3) {
			case 0: /* delete */
				memmove(buf + at, buf + at + 1, len - at);
				len--;
				break;
			case 1: /* replace */
				buf[at] = alphabet[fwt_rng_u64(&rng) % (sizeof alphabet - 1)];
				break;
			default: /* insert */
				memmove(buf + at + 1, buf + at, len - at + 1);
				buf[at] = alphabet[fwt_rng_u64(&rng) % (sizeof alphabet - 1)];
				len++;
			}
		}
		struct fw_err err = { 0 };
		struct fw_chat_template *t = fw_chat_template_compile(buf, &err);
		if (!t) {
			ck_one_line(err.msg);
			continue;
		}
		char *s = fw_chat_template_render_json(t, msgs, it & 1,
						       "{\"tools\": [{\"name\": \"f\"}], \"bos_token\": \"<s>\"}",
						       &err);
		if (s) {
			rendered++;
			fw_free(s);
		} else {
			ck_one_line(err.msg);
		}
		fw_chat_template_free(t);
	}
	free(buf);
	ck_assert_msg(rendered > 100, "only %d mutated templates rendered", rendered);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("chat_template");
	TCase *tc = fwt_tcase("render", 60);
	tcase_add_test(tc, test_render);
	suite_add_tcase(s, tc);
	tc = fwt_tcase("errors", 300);
	tcase_add_test(tc, test_syntax_errors);
	tcase_add_test(tc, test_runtime_errors);
	tcase_add_test(tc, test_malformed_inputs);
	tcase_add_test(tc, test_mutations);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return fwt_run_suite(suite());
}
