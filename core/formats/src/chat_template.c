/* chat_template.c - a small Jinja interpreter for Hugging Face chat templates.
 *
 * Hand-written because no Jinja library for C is packaged in Debian. The
 * reference is @huggingface/jinja (see fw/chat_template.h); values are
 * jansson values, with NULL standing for Jinja's undefined.
 *
 * text -> preprocess (lstrip/trim_blocks as HF) -> tokens -> AST -> render.
 */
#define _GNU_SOURCE /* memmem */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "fw/chat_template.h"

#define MAX_DEPTH 200

/* --- growable string -------------------------------------------------------- */

struct sbuf {
	char *p;
	size_t n, cap;
	int oom;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->n + n + 1 > b->cap) {
		size_t c = b->cap ? b->cap : 64;
		while (c < b->n + n + 1)
			c *= 2;
		char *q = realloc(b->p, c);
		if (!q) {
			b->oom = 1;
			return;
		}
		b->p = q;
		b->cap = c;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = 0;
}

static void sb_str(struct sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

/* --- tokens ------------------------------------------------------------------ */

enum tk { T_TEXT, T_OPEN_S, T_CLOSE_S, T_OPEN_E, T_CLOSE_E, T_NAME, T_STR, T_INT, T_FLOAT, T_OP, T_EOF };

struct token {
	enum tk t;
	char *s;        /* text, name, string value, operator */
	size_t n;
	long long i;
	double f;
	size_t pos;     /* offset in the original template */
};

/* --- AST --------------------------------------------------------------------- */

enum nk {
	/* statements */
	N_TEXT, N_OUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_MACRO, N_BREAK, N_CONTINUE,
	/* expressions */
	N_LIT, N_NAME, N_LIST, N_TUPLE, N_DICT, N_ATTR, N_INDEX, N_SLICE, N_CALL, N_FILTER,
	N_TEST, N_NOT, N_NEG, N_AND, N_OR, N_BIN, N_COND, N_KWARG,
};

struct node {
	enum nk k;
	size_t pos;
	char *s;                /* name, attribute, operator, test/filter name */
	json_t *lit;            /* N_LIT, N_TEXT (as string) */
	struct node *a, *b, *c, *d;
	struct node **v;        /* children: body, args, list items */
	size_t nv;
	struct node **w;        /* else body, kwargs, dict values */
	size_t nw;
	int neg;                /* `is not`, `not in` */
};

struct fw_chat_template {
	char *src;              /* the original text (for positions) */
	size_t *map;            /* preprocessed offset -> original offset */
	struct token *tok;
	size_t ntok;
	struct node *root;
	struct node **all;      /* every node, for freeing */
	size_t nall, capall;
};

struct parser {
	struct fw_chat_template *t;
	size_t i;
	int depth;
	struct fw_err *err;
	int failed;
};

static void pos_line_col(const char *src, size_t pos, int *line, int *col)
{
	int l = 1, c = 1;
	for (size_t i = 0; i < pos && src[i]; i++) {
		if (src[i] == '\n') {
			l++;
			c = 1;
		} else if (((unsigned char)src[i] & 0xC0) != 0x80) {
			c++;
		}
	}
	*line = l;
	*col = c;
}

static void errat(struct fw_err *err, enum fw_status st, const char *src, size_t pos, const char *fmt,
		  ...)
{
	char msg[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	for (char *p = msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	int line, col;
	pos_line_col(src, pos, &line, &col);
	fw_errorf(err, st, "chat template: line %d col %d: %s", line, col, msg);
}

/* --- preprocess and lex ------------------------------------------------------ */

/* HF: drop one final newline; lstrip_blocks: /^[ \t]*({[#%-])/gm -> $1;
 * trim_blocks: /([#%-]})\n/g -> $1. */
static char *preprocess(const char *s, size_t **mapp)
{
	size_t n = strlen(s);
	if (n && s[n - 1] == '\n')
		n--;
	char *a = malloc(n + 1), *b = malloc(n + 1);
	size_t *ma = malloc((n + 1) * sizeof *ma), *mb = malloc((n + 1) * sizeof *mb);
	if (!a || !b || !ma || !mb) {
		free(a), free(b), free(ma), free(mb);
		return NULL;
	}
	size_t k = 0;
	for (size_t i = 0; i < n;) {
		if (i == 0 || s[i - 1] == '\n') {
			size_t j = i;
			while (j < n && (s[j] == ' ' || s[j] == '\t'))
				j++;
			if (j + 1 < n && s[j] == '{' && (s[j + 1] == '#' || s[j + 1] == '%' || s[j + 1] == '-'))
				i = j;
		}
		ma[k] = i;
		a[k++] = s[i++];
		while (i < n && s[i - 1] != '\n') {
			ma[k] = i;
			a[k++] = s[i++];
		}
	}
	size_t m = 0;
	for (size_t i = 0; i < k; i++) {
		mb[m] = ma[i];
		b[m++] = a[i];
		if (a[i] == '}' && i > 0 && (a[i - 1] == '#' || a[i - 1] == '%' || a[i - 1] == '-') &&
		    i + 1 < k && a[i + 1] == '\n')
			i++;
	}
	b[m] = 0;
	mb[m] = n;
	free(a);
	free(ma);
	*mapp = mb;
	return b;
}

static int is_ws(unsigned char c)
{
	return c == ' ' || (c >= 9 && c <= 13);
}

/* Length of the Unicode whitespace (JS's \s) that ends at p[n] / starts at p. */
static size_t uws_len(const char *p, size_t n)
{
	const unsigned char *u = (const unsigned char *)p;
	if (n >= 1 && is_ws(u[0]))
		return 1;
	if (n >= 2 && u[0] == 0xC2 && u[1] == 0xA0)
		return 2;
	if (n >= 3) {
		unsigned cp = ((u[0] & 0x0F) << 12) | ((u[1] & 0x3F) << 6) | (u[2] & 0x3F);
		if ((u[0] & 0xF0) == 0xE0 &&
		    (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
		     cp == 0x202F || cp == 0x205F || cp == 0x3000 || cp == 0xFEFF))
			return 3;
	}
	return 0;
}

static void trim_range(const char *s, size_t *a, size_t *b, int left, int right)
{
	size_t l;
	while (left && *a < *b && (l = uws_len(s + *a, *b - *a)))
		*a += l;
	while (right && *b > *a) {
		size_t i = *b - 1;
		while (i > *a && ((unsigned char)s[i] & 0xC0) == 0x80)
			i--;
		if (i < *a || !(l = uws_len(s + i, *b - i)) || i + l != *b)
			break;
		*b = i;
	}
}

static int push_tok(struct fw_chat_template *t, size_t *cap, enum tk k, const char *s, size_t n,
		    size_t pos)
{
	if (t->ntok == *cap) {
		size_t c = *cap ? *cap * 2 : 64;
		struct token *q = realloc(t->tok, c * sizeof *q);
		if (!q)
			return -1;
		t->tok = q;
		*cap = c;
	}
	struct token *x = &t->tok[t->ntok];
	memset(x, 0, sizeof *x);
	x->t = k;
	x->pos = pos;
	x->s = malloc(n + 1);
	if (!x->s)
		return -1;
	if (n)
		memcpy(x->s, s, n);
	x->s[n] = 0;
	x->n = n;
	t->ntok++;
	return 0;
}

static int lex(struct fw_chat_template *t, const char *src, const size_t *map, struct fw_err *err)
{
	size_t n = strlen(src), i = 0, cap = 0;
	int inside = 0; /* 0 text, 1 statement, 2 expression */
	int braces = 0;
#define PUSH(k, s, len, p)                                                                    \
	do {                                                                                  \
		if (push_tok(t, &cap, k, s, len, map[p])) {                                   \
			fw_errorf(err, FW_ERR_NOMEM, "chat template: out of memory");          \
			return -1;                                                            \
		}                                                                             \
	} while (0)
#define LEXERR(p, ...)                                                                        \
	do {                                                                                  \
		errat(err, FW_ERR_FORMAT, t->src, map[p], __VA_ARGS__);                       \
		return -1;                                                                    \
	} while (0)
	while (i < n) {
		if (!inside) {
			size_t e = i;
			while (e < n && !(src[e] == '{' && e + 1 < n &&
					  (src[e + 1] == '%' || src[e + 1] == '{' || src[e + 1] == '#')))
				e++;
			if (e > i)
				PUSH(T_TEXT, src + i, e - i, i);
			i = e;
			if (i >= n)
				break;
			int strip = i + 2 < n && src[i + 2] == '-';
			if (strip && t->ntok && t->tok[t->ntok - 1].t == T_TEXT) {
				struct token *x = &t->tok[t->ntok - 1];
				size_t a = 0, b = x->n;
				trim_range(x->s, &a, &b, 0, 1);
				x->n = b;
				x->s[b] = 0;
				if (!b) {
					free(x->s);
					t->ntok--;
				}
			}
			if (src[i + 1] == '#') {
				const char *e2 = strstr(src + i + 2, "#}");
				if (!e2)
					LEXERR(i, "missing end of comment tag '#}'");
				size_t end = (size_t)(e2 - src);
				int strip_after = end > i + 2 && src[end - 1] == '-';
				i = end + 2;
				if (strip_after)
					while (i < n && is_ws((unsigned char)src[i]))
						i++;
				continue;
			}
			inside = src[i + 1] == '%' ? 1 : 2;
			PUSH(inside == 1 ? T_OPEN_S : T_OPEN_E, src + i, 2, i);
			braces = 0;
			i += strip ? 3 : 2;
			continue;
		}
		while (i < n && is_ws((unsigned char)src[i]))
			i++;
		if (i >= n)
			break;
		char c = src[i];
		if (c == '-' && i + 2 < n && src[i + 2] == '}' && (src[i + 1] == '%' || src[i + 1] == '}') &&
		    !(inside == 2 && src[i + 1] == '%')) {
			PUSH(inside == 1 ? T_CLOSE_S : T_CLOSE_E, src + i, 3, i);
			i += 3;
			while (i < n && is_ws((unsigned char)src[i]))
				i++;
			inside = 0;
			continue;
		}
		if ((inside == 1 && c == '%' && i + 1 < n && src[i + 1] == '}') ||
		    (inside == 2 && c == '}' && braces == 0 && i + 1 < n && src[i + 1] == '}')) {
			PUSH(inside == 1 ? T_CLOSE_S : T_CLOSE_E, src + i, 2, i);
			i += 2;
			inside = 0;
			continue;
		}
		if (c == '\'' || c == '"') {
			struct sbuf b = { 0 };
			size_t st = i++;
			while (i < n && src[i] != c) {
				if (src[i] == '\\') {
					if (i + 1 >= n)
						break;
					char e = src[i + 1], o;
					i += 2;
					switch (e) {
					case 'n': o = '\n'; break;
					case 't': o = '\t'; break;
					case 'r': o = '\r'; break;
					case 'b': o = '\b'; break;
					case 'f': o = '\f'; break;
					case 'v': o = '\v'; break;
					case '\'': o = '\''; break;
					case '"': o = '"'; break;
					case '\\': o = '\\'; break;
					default:
						free(b.p);
						LEXERR(i - 2, "unexpected escaped character: %c", e);
					}
					sb_add(&b, &o, 1);
				} else {
					sb_add(&b, src + i, 1);
					i++;
				}
			}
			if (i >= n) {
				free(b.p);
				LEXERR(st, "unterminated string");
			}
			i++;
			if (b.oom) {
				free(b.p);
				fw_errorf(err, FW_ERR_NOMEM, "chat template: out of memory");
				return -1;
			}
			PUSH(T_STR, b.p ? b.p : "", b.n, st);
			free(b.p);
			continue;
		}
		if (isdigit((unsigned char)c)) {
			size_t st = i;
			while (i < n && isdigit((unsigned char)src[i]))
				i++;
			int fl = 0;
			if (i + 1 < n && src[i] == '.' && isdigit((unsigned char)src[i + 1])) {
				fl = 1;
				i++;
				while (i < n && isdigit((unsigned char)src[i]))
					i++;
			}
			PUSH(fl ? T_FLOAT : T_INT, src + st, i - st, st);
			struct token *x = &t->tok[t->ntok - 1];
			if (fl)
				x->f = strtod(x->s, NULL);
			else
				x->i = strtoll(x->s, NULL, 10);
			continue;
		}
		if (isalpha((unsigned char)c) || c == '_') {
			size_t st = i;
			while (i < n && (isalnum((unsigned char)src[i]) || src[i] == '_'))
				i++;
			PUSH(T_NAME, src + st, i - st, st);
			continue;
		}
		static const char *ops2[] = { "==", "!=", "<=", ">=", "//", "**" };
		int done = 0;
		for (size_t k = 0; k < sizeof ops2 / sizeof *ops2; k++)
			if (i + 1 < n && src[i] == ops2[k][0] && src[i + 1] == ops2[k][1]) {
				PUSH(T_OP, src + i, 2, i);
				i += 2;
				done = 1;
				break;
			}
		if (done)
			continue;
		if (strchr("<>+-*/%~|.,:()[]{}=", c) && c) {
			if (c == '{')
				braces++;
			if (c == '}')
				braces--;
			PUSH(T_OP, src + i, 1, i);
			i++;
			continue;
		}
		LEXERR(i, "unexpected character '%c'", c);
	}
	if (inside)
		LEXERR(n, "unexpected end of template inside a tag");
	PUSH(T_EOF, "", 0, n);
	return 0;
#undef PUSH
#undef LEXERR
}

/* --- parser ------------------------------------------------------------------ */

static struct node *mk(struct parser *p, enum nk k, size_t pos)
{
	struct fw_chat_template *t = p->t;
	if (t->nall == t->capall) {
		size_t c = t->capall ? t->capall * 2 : 64;
		struct node **q = realloc(t->all, c * sizeof *q);
		if (!q)
			goto oom;
		t->all = q;
		t->capall = c;
	}
	struct node *x = calloc(1, sizeof *x);
	if (!x)
		goto oom;
	x->k = k;
	x->pos = pos;
	t->all[t->nall++] = x;
	return x;
oom:
	if (!p->failed)
		fw_errorf(p->err, FW_ERR_NOMEM, "chat template: out of memory");
	p->failed = 1;
	return NULL;
}

static int push_node(struct parser *p, struct node ***v, size_t *n, struct node *x)
{
	struct node **q = realloc(*v, (*n + 1) * sizeof *q);
	if (!q) {
		if (!p->failed)
			fw_errorf(p->err, FW_ERR_NOMEM, "chat template: out of memory");
		p->failed = 1;
		return -1;
	}
	*v = q;
	q[(*n)++] = x;
	return 0;
}

static struct token *cur(struct parser *p)
{
	return &p->t->tok[p->i];
}

static int is_op(struct parser *p, const char *op)
{
	struct token *x = cur(p);
	return x->t == T_OP && !strcmp(x->s, op);
}

static int is_name(struct parser *p, const char *nm)
{
	struct token *x = cur(p);
	return x->t == T_NAME && !strcmp(x->s, nm);
}

static void perr(struct parser *p, const char *fmt, ...)
{
	if (p->failed)
		return;
	char msg[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	struct token *x = cur(p);
	const char *what = x->t == T_EOF ? "end of template" : x->s;
	errat(p->err, FW_ERR_FORMAT, p->t->src, x->pos, "%s (found '%.40s')", msg, what);
	p->failed = 1;
}

static int expect_op(struct parser *p, const char *op)
{
	if (p->failed)
		return -1;
	if (!is_op(p, op)) {
		perr(p, "expected '%s'", op);
		return -1;
	}
	p->i++;
	return 0;
}

static int expect_close(struct parser *p)
{
	if (p->failed)
		return -1;
	if (cur(p)->t != T_CLOSE_S) {
		perr(p, "expected '%%}'");
		return -1;
	}
	p->i++;
	return 0;
}

static struct node *expr(struct parser *p);
static struct node *or_expr(struct parser *p);

static char *name_tok(struct parser *p)
{
	if (p->failed)
		return NULL;
	if (cur(p)->t != T_NAME) {
		perr(p, "expected a name");
		return NULL;
	}
	return p->t->tok[p->i++].s;
}

/* args of a call: ( a, b, k=v ) ; the '(' is consumed already */
static int call_args(struct parser *p, struct node *call)
{
	while (!p->failed && !is_op(p, ")")) {
		if (cur(p)->t == T_NAME && p->t->tok[p->i + 1].t == T_OP && !strcmp(p->t->tok[p->i + 1].s, "=")) {
			struct node *kw = mk(p, N_KWARG, cur(p)->pos);
			if (!kw)
				return -1;
			kw->s = cur(p)->s;
			p->i += 2;
			kw->a = expr(p);
			if (!kw->a || push_node(p, &call->w, &call->nw, kw))
				return -1;
		} else {
			struct node *a = expr(p);
			if (!a || push_node(p, &call->v, &call->nv, a))
				return -1;
		}
		if (!is_op(p, ","))
			break;
		p->i++;
	}
	return expect_op(p, ")");
}

static struct node *primary(struct parser *p)
{
	struct token *x = cur(p);
	struct node *n = NULL;
	if (p->failed)
		return NULL;
	if (++p->depth > MAX_DEPTH) {
		perr(p, "expression nested too deeply");
		return NULL;
	}
	switch (x->t) {
	case T_STR: {
		/* adjacent string literals concatenate */
		struct sbuf b = { 0 };
		size_t pos = x->pos;
		while (cur(p)->t == T_STR) {
			sb_add(&b, cur(p)->s, cur(p)->n);
			p->i++;
		}
		n = mk(p, N_LIT, pos);
		if (n)
			n->lit = json_stringn_nocheck(b.p ? b.p : "", b.n);
		free(b.p);
		if (n && !n->lit) {
			perr(p, "out of memory");
			n = NULL;
		}
		break;
	}
	case T_INT:
		n = mk(p, N_LIT, x->pos);
		if (n)
			n->lit = json_integer(x->i);
		p->i++;
		break;
	case T_FLOAT:
		n = mk(p, N_LIT, x->pos);
		if (n)
			n->lit = json_real(x->f);
		p->i++;
		break;
	case T_NAME:
		if (!strcmp(x->s, "true") || !strcmp(x->s, "True")) {
			n = mk(p, N_LIT, x->pos);
			if (n)
				n->lit = json_true();
		} else if (!strcmp(x->s, "false") || !strcmp(x->s, "False")) {
			n = mk(p, N_LIT, x->pos);
			if (n)
				n->lit = json_false();
		} else if (!strcmp(x->s, "none") || !strcmp(x->s, "None")) {
			n = mk(p, N_LIT, x->pos);
			if (n)
				n->lit = json_null();
		} else {
			n = mk(p, N_NAME, x->pos);
			if (n)
				n->s = x->s;
		}
		p->i++;
		break;
	case T_OP:
		if (is_op(p, "(")) {
			p->i++;
			n = expr(p);
			if (n && is_op(p, ",")) {
				struct node *tu = mk(p, N_TUPLE, x->pos);
				if (!tu || push_node(p, &tu->v, &tu->nv, n))
					break;
				while (is_op(p, ",")) {
					p->i++;
					if (is_op(p, ")"))
						break;
					struct node *e = expr(p);
					if (!e || push_node(p, &tu->v, &tu->nv, e))
						break;
				}
				n = tu;
			}
			if (expect_op(p, ")"))
				n = NULL;
		} else if (is_op(p, "[")) {
			p->i++;
			n = mk(p, N_LIST, x->pos);
			while (n && !p->failed && !is_op(p, "]")) {
				struct node *e = expr(p);
				if (!e || push_node(p, &n->v, &n->nv, e))
					break;
				if (!is_op(p, ","))
					break;
				p->i++;
			}
			if (expect_op(p, "]"))
				n = NULL;
		} else if (is_op(p, "{")) {
			p->i++;
			n = mk(p, N_DICT, x->pos);
			while (n && !p->failed && !is_op(p, "}")) {
				struct node *k = expr(p);
				if (!k || expect_op(p, ":"))
					break;
				struct node *v = expr(p);
				if (!v || push_node(p, &n->v, &n->nv, k) || push_node(p, &n->w, &n->nw, v))
					break;
				if (!is_op(p, ","))
					break;
				p->i++;
			}
			if (expect_op(p, "}"))
				n = NULL;
		} else {
			perr(p, "unexpected '%s'", x->s);
		}
		break;
	default:
		perr(p, "expected an expression");
	}
	p->depth--;
	if (p->failed)
		return NULL;
	return n;
}

static struct node *postfix(struct parser *p)
{
	struct node *n = primary(p);
	while (n && !p->failed) {
		size_t pos = cur(p)->pos;
		if (is_op(p, ".")) {
			p->i++;
			struct node *a = mk(p, N_ATTR, pos);
			if (!a)
				return NULL;
			a->a = n;
			a->s = name_tok(p);
			if (!a->s)
				return NULL;
			n = a;
		} else if (is_op(p, "[")) {
			p->i++;
			struct node *s[3] = { NULL, NULL, NULL };
			int k = 0, slice = 0;
			while (!p->failed) {
				if (!is_op(p, ":") && !is_op(p, "]"))
					s[k] = expr(p);
				if (is_op(p, ":") && k < 2) {
					slice = 1;
					k++;
					p->i++;
					continue;
				}
				break;
			}
			if (expect_op(p, "]"))
				return NULL;
			if (!slice && !s[0]) {
				perr(p, "empty subscript");
				return NULL;
			}
			struct node *a = mk(p, slice ? N_SLICE : N_INDEX, pos);
			if (!a)
				return NULL;
			a->a = n;
			a->b = s[0];
			a->c = s[1];
			a->d = s[2];
			n = a;
		} else if (is_op(p, "(")) {
			p->i++;
			struct node *c = mk(p, N_CALL, pos);
			if (!c)
				return NULL;
			c->a = n;
			if (call_args(p, c))
				return NULL;
			n = c;
		} else {
			break;
		}
	}
	return p->failed ? NULL : n;
}

/* filters and tests bind to the postfix expression */
static struct node *filtered(struct parser *p)
{
	struct node *n = postfix(p);
	while (n && !p->failed) {
		size_t pos = cur(p)->pos;
		if (is_op(p, "|")) {
			p->i++;
			struct node *f = mk(p, N_FILTER, pos);
			if (!f)
				return NULL;
			f->a = n;
			f->s = name_tok(p);
			if (!f->s)
				return NULL;
			if (is_op(p, "(")) {
				p->i++;
				if (call_args(p, f))
					return NULL;
			}
			n = f;
		} else if (is_name(p, "is")) {
			p->i++;
			struct node *f = mk(p, N_TEST, pos);
			if (!f)
				return NULL;
			f->a = n;
			if (is_name(p, "not")) {
				f->neg = 1;
				p->i++;
			}
			f->s = name_tok(p);
			if (!f->s)
				return NULL;
			if (is_op(p, "(")) {
				p->i++;
				if (call_args(p, f))
					return NULL;
			} else if (cur(p)->t == T_STR || cur(p)->t == T_INT || cur(p)->t == T_FLOAT ||
				   (cur(p)->t == T_NAME && !is_name(p, "and") && !is_name(p, "or") &&
				    !is_name(p, "else") && !is_name(p, "if") && !is_name(p, "in") &&
				    !is_name(p, "is") && !is_name(p, "not"))) {
				struct node *a = postfix(p);
				if (!a || push_node(p, &f->v, &f->nv, a))
					return NULL;
			}
			n = f;
		} else {
			break;
		}
	}
	return p->failed ? NULL : n;
}

static struct node *unary(struct parser *p)
{
	if (is_op(p, "-") || is_op(p, "+")) {
		size_t pos = cur(p)->pos;
		int neg = is_op(p, "-");
		p->i++;
		if (++p->depth > MAX_DEPTH) {
			perr(p, "expression nested too deeply");
			return NULL;
		}
		struct node *a = unary(p);
		p->depth--;
		if (!a || !neg)
			return a;
		struct node *n = mk(p, N_NEG, pos);
		if (n)
			n->a = a;
		return n;
	}
	return filtered(p);
}

static struct node *binop(struct parser *p, int level);

static const char *LEVELS[][4] = {
	{ "+", "-", NULL }, { "~", NULL }, { "*", "/", "//", "%" }, { "**", NULL },
};

static struct node *binop(struct parser *p, int level)
{
	if (level == 4)
		return unary(p);
	struct node *n = binop(p, level + 1);
	while (n && !p->failed) {
		const char *op = NULL;
		for (int k = 0; k < 4 && LEVELS[level][k]; k++)
			if (is_op(p, LEVELS[level][k]))
				op = LEVELS[level][k];
		if (!op)
			break;
		struct node *b = mk(p, N_BIN, cur(p)->pos);
		if (!b)
			return NULL;
		p->i++;
		b->s = (char *)op;
		b->a = n;
		b->b = binop(p, level + 1);
		if (!b->b)
			return NULL;
		n = b;
	}
	return n;
}

static struct node *compare(struct parser *p)
{
	struct node *n = binop(p, 0);
	while (n && !p->failed) {
		static const char *ops[] = { "==", "!=", "<", ">", "<=", ">=" };
		const char *op = NULL;
		int neg = 0;
		size_t adv = 1;
		for (size_t k = 0; k < 6; k++)
			if (is_op(p, ops[k]))
				op = ops[k];
		if (!op && is_name(p, "in"))
			op = "in";
		if (!op && is_name(p, "not") && p->t->tok[p->i + 1].t == T_NAME &&
		    !strcmp(p->t->tok[p->i + 1].s, "in")) {
			op = "in";
			neg = 1;
			adv = 2;
		}
		if (!op)
			break;
		struct node *b = mk(p, N_BIN, cur(p)->pos);
		if (!b)
			return NULL;
		p->i += adv;
		b->s = (char *)op;
		b->neg = neg;
		b->a = n;
		b->b = binop(p, 0);
		if (!b->b)
			return NULL;
		n = b;
	}
	return n;
}

static struct node *not_expr(struct parser *p)
{
	if (is_name(p, "not")) {
		size_t pos = cur(p)->pos;
		p->i++;
		if (++p->depth > MAX_DEPTH) {
			perr(p, "expression nested too deeply");
			return NULL;
		}
		struct node *a = not_expr(p);
		p->depth--;
		if (!a)
			return NULL;
		struct node *n = mk(p, N_NOT, pos);
		if (n)
			n->a = a;
		return n;
	}
	return compare(p);
}

/* level 0: a or b; level 1: a and b */
static struct node *logic(struct parser *p, int level)
{
	const char *kw = level ? "and" : "or";
	struct node *n = level ? not_expr(p) : logic(p, 1);
	while (n && is_name(p, kw)) {
		struct node *b = mk(p, level ? N_AND : N_OR, cur(p)->pos);
		if (!b)
			return NULL;
		p->i++;
		b->a = n;
		b->b = level ? not_expr(p) : logic(p, 1);
		if (!b->b)
			return NULL;
		n = b;
	}
	return n;
}

static struct node *or_expr(struct parser *p)
{
	return logic(p, 0);
}

static struct node *expr(struct parser *p)
{
	if (++p->depth > MAX_DEPTH) {
		perr(p, "expression nested too deeply");
		return NULL;
	}
	struct node *n = or_expr(p);
	while (n && is_name(p, "if")) {
		struct node *c = mk(p, N_COND, cur(p)->pos);
		if (!c)
			return NULL;
		p->i++;
		c->a = n;
		c->b = or_expr(p);
		if (!c->b)
			return NULL;
		if (is_name(p, "else")) {
			p->i++;
			c->c = expr(p);
			if (!c->c)
				return NULL;
		}
		n = c;
	}
	p->depth--;
	return p->failed ? NULL : n;
}

/* target of for/set: a name, a.b, or names separated by commas */
static struct node *target(struct parser *p, int allow_attr)
{
	size_t pos = cur(p)->pos;
	char *nm = name_tok(p);
	if (!nm)
		return NULL;
	struct node *n = mk(p, N_NAME, pos);
	if (!n)
		return NULL;
	n->s = nm;
	if (allow_attr && is_op(p, ".")) {
		p->i++;
		struct node *a = mk(p, N_ATTR, pos);
		if (!a)
			return NULL;
		a->a = n;
		a->s = name_tok(p);
		return a->s ? a : NULL;
	}
	if (is_op(p, ",")) {
		struct node *tu = mk(p, N_TUPLE, pos);
		if (!tu || push_node(p, &tu->v, &tu->nv, n))
			return NULL;
		while (is_op(p, ",")) {
			p->i++;
			size_t ps = cur(p)->pos;
			char *m = name_tok(p);
			struct node *e = m ? mk(p, N_NAME, ps) : NULL;
			if (!e)
				return NULL;
			e->s = m;
			if (push_node(p, &tu->v, &tu->nv, e))
				return NULL;
		}
		return tu;
	}
	return n;
}

/* Parses statements until one of the `{% name %}` in stops (left unconsumed,
 * after the '{%'), or the end when stops is NULL. */
static int body(struct parser *p, struct node ***v, size_t *nv, const char *const *stops);

static int stop_here(struct parser *p, const char *const *stops)
{
	if (cur(p)->t != T_OPEN_S || p->t->tok[p->i + 1].t != T_NAME)
		return 0;
	for (; stops && *stops; stops++)
		if (!strcmp(p->t->tok[p->i + 1].s, *stops))
			return 1;
	return 0;
}

/* After body() stopped: the template must not have ended. */
static int at_tag(struct parser *p, const char *end)
{
	if (p->t->tok[p->i].t != T_EOF)
		return 0;
	perr(p, "missing {%% %s %%}", end);
	return -1;
}

/* Consumes `{% end %}` where body() stopped. */
static int end_tag(struct parser *p, const char *end)
{
	if (at_tag(p, end))
		return -1;
	p->i += 2;
	return expect_close(p);
}

static struct node *statement(struct parser *p)
{
	p->i++; /* {% */
	size_t pos = cur(p)->pos;
	if (cur(p)->t != T_NAME) {
		perr(p, "expected a statement name");
		return NULL;
	}
	const char *kw = cur(p)->s;
	if (++p->depth > MAX_DEPTH) {
		perr(p, "blocks nested too deeply");
		return NULL;
	}
	struct node *n = NULL;
	if (!strcmp(kw, "if")) {
		static const char *const st[] = { "elif", "else", "endif", NULL };
		p->i++;
		n = mk(p, N_IF, pos);
		if (!n || !(n->a = expr(p)) || expect_close(p) || body(p, &n->v, &n->nv, st))
			return NULL;
		struct node *last = n;
		for (;;) {
			if (at_tag(p, "endif"))
				return NULL;
			const char *w = p->t->tok[p->i + 1].s;
			p->i += 2;
			if (!strcmp(w, "elif")) {
				struct node *e = mk(p, N_IF, cur(p)->pos);
				if (!e || !(e->a = expr(p)) || expect_close(p) || body(p, &e->v, &e->nv, st))
					return NULL;
				if (push_node(p, &last->w, &last->nw, e))
					return NULL;
				last = e;
			} else if (!strcmp(w, "else")) {
				static const char *const st2[] = { "endif", NULL };
				if (expect_close(p) || body(p, &last->w, &last->nw, st2))
					return NULL;
				if (at_tag(p, "endif"))
					return NULL;
			} else {
				if (expect_close(p))
					return NULL;
				break;
			}
		}
	} else if (!strcmp(kw, "for")) {
		static const char *const st[] = { "else", "endfor", NULL };
		static const char *const st2[] = { "endfor", NULL };
		p->i++;
		n = mk(p, N_FOR, pos);
		if (!n || !(n->a = target(p, 0)))
			return NULL;
		if (!is_name(p, "in")) {
			perr(p, "expected 'in'");
			return NULL;
		}
		p->i++;
		if (!(n->b = or_expr(p)))
			return NULL;
		if (is_name(p, "if")) {
			p->i++;
			if (!(n->c = or_expr(p)))
				return NULL;
		}
		if (expect_close(p) || body(p, &n->v, &n->nv, st))
			return NULL;
		if (at_tag(p, "endfor"))
			return NULL;
		if (!strcmp(p->t->tok[p->i + 1].s, "else")) {
			p->i += 2;
			if (expect_close(p) || body(p, &n->w, &n->nw, st2))
				return NULL;
		}
		if (end_tag(p, "endfor"))
			return NULL;
	} else if (!strcmp(kw, "set")) {
		p->i++;
		struct node *tg = target(p, 1);
		if (!tg)
			return NULL;
		if (cur(p)->t == T_CLOSE_S) {
			static const char *const st[] = { "endset", NULL };
			if (tg->k != N_NAME) {
				perr(p, "a set block assigns one name");
				return NULL;
			}
			n = mk(p, N_SETBLOCK, pos);
			if (!n)
				return NULL;
			n->a = tg;
			p->i++;
			if (body(p, &n->v, &n->nv, st))
				return NULL;
			if (end_tag(p, "endset"))
				return NULL;
		} else {
			n = mk(p, N_SET, pos);
			if (!n || expect_op(p, "="))
				return NULL;
			n->a = tg;
			struct node *e = expr(p);
			if (e && is_op(p, ",")) {
				struct node *tu = mk(p, N_TUPLE, e->pos);
				if (!tu || push_node(p, &tu->v, &tu->nv, e))
					return NULL;
				while (is_op(p, ",")) {
					p->i++;
					struct node *x = expr(p);
					if (!x || push_node(p, &tu->v, &tu->nv, x))
						return NULL;
				}
				e = tu;
			}
			if (!(n->b = e) || expect_close(p))
				return NULL;
		}
	} else if (!strcmp(kw, "macro")) {
		static const char *const st[] = { "endmacro", NULL };
		p->i++;
		n = mk(p, N_MACRO, pos);
		if (!n || !(n->s = name_tok(p)) || expect_op(p, "("))
			return NULL;
		/* parameters: names (v, as N_NAME) with optional defaults (w, N_KWARG) */
		if (call_args(p, n))
			return NULL;
		for (size_t k = 0; k < n->nv; k++)
			if (n->v[k]->k != N_NAME) {
				perr(p, "macro parameters must be names");
				return NULL;
			}
		/* body in d->v */
		if (expect_close(p) || !(n->d = mk(p, N_TEXT, pos)) || body(p, &n->d->v, &n->d->nv, st))
			return NULL;
		if (end_tag(p, "endmacro"))
			return NULL;
	} else if (!strcmp(kw, "break") || !strcmp(kw, "continue")) {
		n = mk(p, kw[0] == 'b' ? N_BREAK : N_CONTINUE, pos);
		p->i++;
		if (!n || expect_close(p))
			return NULL;
	} else {
		perr(p, "unknown or misplaced statement '%s'", kw);
		return NULL;
	}
	p->depth--;
	return n;
}

static int body(struct parser *p, struct node ***v, size_t *nv, const char *const *stops)
{
	for (;;) {
		if (p->failed)
			return -1;
		struct token *x = cur(p);
		if (x->t == T_EOF)
			return 0;
		if (stops && stop_here(p, stops))
			return 0;
		struct node *n = NULL;
		if (x->t == T_TEXT) {
			n = mk(p, N_TEXT, x->pos);
			if (n && !(n->lit = json_stringn_nocheck(x->s, x->n)))
				perr(p, "out of memory");
			p->i++;
		} else if (x->t == T_OPEN_E) {
			p->i++;
			n = mk(p, N_OUT, x->pos);
			if (n && (n->a = expr(p)) && cur(p)->t != T_CLOSE_E)
				perr(p, "expected '}}'");
			p->i++;
		} else if (x->t == T_OPEN_S) {
			n = statement(p);
		} else {
			perr(p, "unexpected token");
		}
		if (!n || p->failed || push_node(p, v, nv, n))
			return -1;
	}
}

static void free_tokens(struct fw_chat_template *t)
{
	for (size_t i = 0; i < t->ntok; i++)
		free(t->tok[i].s);
	free(t->tok);
	t->tok = NULL;
	t->ntok = 0;
}

void fw_chat_template_free(struct fw_chat_template *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->nall; i++) {
		struct node *n = t->all[i];
		json_decref(n->lit);
		free(n->v);
		free(n->w);
		free(n);
	}
	free(t->all);
	free_tokens(t);
	free(t->map);
	free(t->src);
	free(t);
}

/* --- evaluation ----------------------------------------------------------------
 * A value is a json_t reference the holder owns; NULL is Jinja's undefined. */

struct scope {
	json_t *vars;
	struct scope *parent;
};

struct rctx {
	const struct fw_chat_template *t;
	struct fw_err *err;
	int failed;
	int depth;
	int ctl; /* 1 break, 2 continue */
	struct node **macros;
	size_t nmacros;
	struct sbuf *out;
};

static void rerr(struct rctx *r, const struct node *n, const char *fmt, ...)
{
	if (r->failed)
		return;
	char msg[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	errat(r->err, FW_ERR_INVALID, r->t->src, n ? n->pos : 0, "%s", msg);
	r->failed = 1;
}

static const char *tname(const json_t *v)
{
	if (!v)
		return "undefined";
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "object";
	case JSON_ARRAY: return "list";
	case JSON_STRING: return "string";
	case JSON_INTEGER: return "integer";
	case JSON_REAL: return "float";
	case JSON_TRUE:
	case JSON_FALSE: return "boolean";
	default: return "none";
	}
}

static json_t *lookup(struct scope *s, const char *name)
{
	for (; s; s = s->parent) {
		json_t *v = json_object_get(s->vars, name);
		if (v)
			return json_incref(v);
	}
	return NULL;
}

static int truthy(const json_t *v)
{
	if (!v)
		return 0;
	switch (json_typeof(v)) {
	case JSON_OBJECT: return json_object_size(v) > 0;
	case JSON_ARRAY: return json_array_size(v) > 0;
	case JSON_STRING: return json_string_length(v) > 0;
	case JSON_INTEGER: return json_integer_value(v) != 0;
	case JSON_REAL: return json_real_value(v) != 0;
	case JSON_TRUE: return 1;
	default: return 0;
	}
}

static int is_num(const json_t *v)
{
	return v && (json_is_integer(v) || json_is_real(v));
}

/* JS Number.prototype.toString: the shortest round-trip digits */
static void fmt_double(struct sbuf *b, double d, int json)
{
	char s[64];
	if (isnan(d)) {
		sb_str(b, json ? "null" : "NaN");
		return;
	}
	if (isinf(d)) {
		sb_str(b, json ? "null" : (d > 0 ? "Infinity" : "-Infinity"));
		return;
	}
	if (!json && d == floor(d) && fabs(d) < 1e21) {
		if (d == 0 && signbit(d))
			sb_str(b, "-0.0");
		else {
			snprintf(s, sizeof s, "%.1f", d);
			sb_str(b, s);
		}
		return;
	}
	for (int p = 1; p <= 17; p++) {
		snprintf(s, sizeof s, "%.*g", p, d);
		if (strtod(s, NULL) == d)
			break;
	}
	/* JS: exponents as e+21 / e-7, no leading zeros */
	char *e = strchr(s, 'e');
	if (e) {
		char m[40], *q = e + 1;
		*e = 0;
		char sign = *q == '-' ? '-' : '+';
		if (*q == '-' || *q == '+')
			q++;
		while (*q == '0' && q[1])
			q++;
		snprintf(m, sizeof m, "%se%c%s", s, sign, q);
		sb_str(b, m);
		return;
	}
	sb_str(b, s);
}

static void json_str(struct sbuf *b, const char *s, size_t n)
{
	sb_add(b, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char e[8];
		switch (c) {
		case '"': sb_str(b, "\\\""); break;
		case '\\': sb_str(b, "\\\\"); break;
		case '\n': sb_str(b, "\\n"); break;
		case '\r': sb_str(b, "\\r"); break;
		case '\t': sb_str(b, "\\t"); break;
		case '\b': sb_str(b, "\\b"); break;
		case '\f': sb_str(b, "\\f"); break;
		default:
			if (c < 0x20) {
				snprintf(e, sizeof e, "\\u%04x", c);
				sb_str(b, e);
			} else {
				sb_add(b, s + i, 1);
			}
		}
	}
	sb_add(b, "\"", 1);
}

/* @huggingface/jinja's toJSON (JSON.stringify per value) */
static void to_json(struct sbuf *b, const json_t *v, int indent, int depth)
{
	if (!v) {
		sb_str(b, "null");
		return;
	}
	const char *isep = indent ? "," : ", ";
	switch (json_typeof(v)) {
	case JSON_NULL: sb_str(b, "null"); break;
	case JSON_TRUE: sb_str(b, "true"); break;
	case JSON_FALSE: sb_str(b, "false"); break;
	case JSON_INTEGER: {
		char s[32];
		snprintf(s, sizeof s, "%lld", (long long)json_integer_value(v));
		sb_str(b, s);
		break;
	}
	case JSON_REAL: fmt_double(b, json_real_value(v), 1); break;
	case JSON_STRING: json_str(b, json_string_value(v), json_string_length(v)); break;
	case JSON_ARRAY:
	case JSON_OBJECT: {
		int arr = json_is_array(v);
		size_t n = arr ? json_array_size(v) : json_object_size(v);
		sb_str(b, arr ? "[" : "{");
		size_t i = 0;
		const char *key;
		json_t *x;
		void *it = arr ? NULL : json_object_iter((json_t *)v);
		for (i = 0; i < n; i++) {
			if (i)
				sb_str(b, isep);
			if (indent) {
				sb_str(b, "\n");
				for (int k = 0; k < indent * (depth + 1); k++)
					sb_str(b, " ");
			}
			if (arr) {
				x = json_array_get(v, i);
			} else {
				key = json_object_iter_key(it);
				x = json_object_iter_value(it);
				it = json_object_iter_next((json_t *)v, it);
				json_str(b, key, strlen(key));
				sb_str(b, ": ");
			}
			to_json(b, x, indent, depth + 1);
		}
		if (indent && n) {
			sb_str(b, "\n");
			for (int k = 0; k < indent * depth; k++)
				sb_str(b, " ");
		}
		sb_str(b, arr ? "]" : "}");
		break;
	}
	}
}

static void to_str(struct sbuf *b, const json_t *v)
{
	if (!v)
		return;
	switch (json_typeof(v)) {
	case JSON_STRING: sb_add(b, json_string_value(v), json_string_length(v)); break;
	case JSON_NULL: sb_str(b, "null"); break;
	case JSON_REAL: fmt_double(b, json_real_value(v), 0); break;
	default: to_json(b, v, 0, 0);
	}
}

/* JS's `value.toString()` of a runtime value's payload, what `+` and `~`
 * concatenate: 1.0 is "1", a list joins its items' strings with ",", a
 * mapping is "[object Map]". */
static void js_str(struct sbuf *b, const json_t *v)
{
	if (!v)
		return;
	if (json_is_real(v)) {
		fmt_double(b, json_real_value(v), 1);
	} else if (json_is_array(v)) {
		for (size_t i = 0; i < json_array_size(v); i++) {
			if (i)
				sb_str(b, ",");
			to_str(b, json_array_get(v, i));
		}
	} else if (json_is_object(v)) {
		sb_str(b, "[object Map]");
	} else {
		to_str(b, v);
	}
}

static json_t *str_of(struct rctx *r, const json_t *v)
{
	struct sbuf b = { 0 };
	to_str(&b, v);
	json_t *s = b.oom ? NULL : json_stringn_nocheck(b.p ? b.p : "", b.n);
	free(b.p);
	if (!s)
		rerr(r, NULL, "out of memory");
	return s;
}

static json_t *mkstr(struct rctx *r, const char *s, size_t n)
{
	json_t *v = json_stringn_nocheck(s, n);
	if (!v)
		rerr(r, NULL, "out of memory");
	return v;
}

/* JS's `a.value == b.value`: undefined equals none, true equals 1, lists
 * and mappings only themselves */
static int values_equal(const json_t *a, const json_t *b)
{
	if (!a || !b || json_is_null(a) || json_is_null(b))
		return (!a || json_is_null(a)) && (!b || json_is_null(b));
	if ((json_is_boolean(a) || is_num(a)) && (json_is_boolean(b) || is_num(b))) {
		double x = json_is_boolean(a) ? json_is_true(a) : json_number_value(a);
		double y = json_is_boolean(b) ? json_is_true(b) : json_number_value(b);
		return x == y;
	}
	if (json_is_array(a) || json_is_object(a) || json_is_array(b) || json_is_object(b))
		return a == b;
	if (json_is_string(a) != json_is_string(b)) { /* JS: the string becomes a number */
		const json_t *str = json_is_string(a) ? a : b, *o = json_is_string(a) ? b : a;
		size_t x = 0, y = json_string_length(str);
		trim_range(json_string_value(str), &x, &y, 1, 1);
		char buf[64], *e;
		double d = 0;
		if (y > x) {
			if (y - x >= sizeof buf)
				return 0;
			memcpy(buf, json_string_value(str) + x, y - x);
			buf[y - x] = 0;
			d = strtod(buf, &e);
			if (*e)
				return 0;
		}
		return d == (json_is_boolean(o) ? json_is_true(o) : json_number_value(o));
	}
	if (is_num(a) && is_num(b))
		return json_number_value(a) == json_number_value(b);
	return json_equal((json_t *)a, (json_t *)b);
}

static json_t *eval(struct rctx *r, struct scope *s, const struct node *n);
static void exec_body(struct rctx *r, struct scope *s, struct node *const *v, size_t nv);

/* UTF-8 code point boundaries of a string */
static size_t *cp_offsets(const char *s, size_t n, size_t *count)
{
	size_t *o = malloc((n + 1) * sizeof *o), k = 0;
	if (!o)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (((unsigned char)s[i] & 0xC0) != 0x80)
			o[k++] = i;
	o[k] = n;
	*count = k;
	return o;
}

static json_t *do_slice(struct rctx *r, const struct node *n, json_t *v, json_t *a, json_t *b, json_t *c)
{
	long long st = c ? json_integer_value(c) : 1;
	if ((a && !json_is_integer(a)) || (b && !json_is_integer(b)) || (c && !json_is_integer(c)) || st == 0) {
		rerr(r, n, "slice indices must be integers and the step not zero");
		return NULL;
	}
	int isstr = json_is_string(v);
	if (!isstr && !json_is_array(v)) {
		rerr(r, n, "cannot slice a %s", tname(v));
		return NULL;
	}
	size_t len = 0, *off = NULL;
	if (isstr) {
		off = cp_offsets(json_string_value(v), json_string_length(v), &len);
		if (!off) {
			rerr(r, n, "out of memory");
			return NULL;
		}
	} else {
		len = json_array_size(v);
	}
	long long L = (long long)len, lo, hi;
	if (st > 0) {
		lo = a ? json_integer_value(a) : 0;
		hi = b ? json_integer_value(b) : L;
		if (lo < 0) lo += L;
		if (hi < 0) hi += L;
		if (lo < 0) lo = 0;
		if (hi > L) hi = L;
	} else {
		lo = a ? json_integer_value(a) : L - 1;
		hi = b ? json_integer_value(b) : -L - 1;
		if (lo < 0) lo += L;
		if (hi < 0) hi += L;
		if (lo >= L) lo = L - 1;
		if (hi < -1) hi = -1;
	}
	json_t *res = NULL;
	struct sbuf sb = { 0 };
	if (!isstr)
		res = json_array();
	for (long long i = lo; st > 0 ? i < hi : i > hi; i += st) {
		if (isstr)
			sb_add(&sb, json_string_value(v) + off[i], off[i + 1] - off[i]);
		else if (res)
			json_array_append(res, json_array_get(v, (size_t)i));
	}
	if (isstr)
		res = json_stringn_nocheck(sb.p ? sb.p : "", sb.n);
	free(sb.p);
	free(off);
	if (!res)
		rerr(r, n, "out of memory");
	return res;
}

static json_t *subscript(struct rctx *r, const struct node *n, json_t *v, json_t *k)
{
	if (!v) {
		rerr(r, n, "cannot index an undefined value");
		return NULL;
	}
	if (json_is_object(v)) {
		if (!json_is_string(k)) {
			json_t *ks = str_of(r, k);
			json_t *x = ks ? json_object_get(v, json_string_value(ks)) : NULL;
			json_decref(ks);
			return json_incref(x);
		}
		return json_incref(json_object_get(v, json_string_value(k)));
	}
	if (json_is_array(v) || json_is_string(v)) {
		if (!json_is_integer(k)) {
			rerr(r, n, "a %s index must be an integer, not %s", tname(v), tname(k));
			return NULL;
		}
		long long i = json_integer_value(k);
		if (json_is_array(v)) {
			long long L = (long long)json_array_size(v);
			if (i < 0)
				i += L;
			return i >= 0 && i < L ? json_incref(json_array_get(v, (size_t)i)) : NULL;
		}
		size_t L, *off = cp_offsets(json_string_value(v), json_string_length(v), &L);
		if (!off) {
			rerr(r, n, "out of memory");
			return NULL;
		}
		if (i < 0)
			i += (long long)L;
		json_t *res = NULL;
		if (i >= 0 && i < (long long)L)
			res = mkstr(r, json_string_value(v) + off[i], off[i + 1] - off[i]);
		free(off);
		return res;
	}
	rerr(r, n, "cannot index a %s", tname(v));
	return NULL;
}

/* evaluates the call's positional and keyword arguments */
struct args {
	json_t *pos[8];
	size_t np;
	const char *kn[8];
	json_t *kv[8];
	size_t nk;
};

static void args_free(struct args *a)
{
	for (size_t i = 0; i < a->np; i++)
		json_decref(a->pos[i]);
	for (size_t i = 0; i < a->nk; i++)
		json_decref(a->kv[i]);
}

static int args_eval(struct rctx *r, struct scope *s, const struct node *n, struct args *a)
{
	memset(a, 0, sizeof *a);
	if (n->nv > 8 || n->nw > 8) {
		rerr(r, n, "too many arguments");
		return -1;
	}
	for (size_t i = 0; i < n->nv; i++) {
		a->pos[a->np++] = eval(r, s, n->v[i]);
		if (r->failed)
			return -1;
	}
	for (size_t i = 0; i < n->nw; i++) {
		a->kn[a->nk] = n->w[i]->s;
		a->kv[a->nk++] = eval(r, s, n->w[i]->a);
		if (r->failed)
			return -1;
	}
	return 0;
}

static json_t *kwarg(struct args *a, const char *name)
{
	for (size_t k = 0; k < a->nk; k++)
		if (!strcmp(a->kn[k], name))
			return a->kv[k];
	return NULL;
}

static json_t *arg(struct args *a, size_t i, const char *name)
{
	if (i < a->np)
		return a->pos[i];
	for (size_t k = 0; k < a->nk; k++)
		if (!strcmp(a->kn[k], name))
			return a->kv[k];
	return NULL;
}

static int in_chars(const char *set, size_t ns, const char *p, size_t l)
{
	for (size_t i = 0; i + l <= ns;) {
		size_t m = 1;
		while (i + m < ns && ((unsigned char)set[i + m] & 0xC0) == 0x80)
			m++;
		if (m == l && !memcmp(set + i, p, l))
			return 1;
		i += m;
	}
	return 0;
}

static size_t cp_len(const char *p)
{
	size_t m = 1;
	while (p[m] && ((unsigned char)p[m] & 0xC0) == 0x80)
		m++;
	return m;
}

/* Python's str.strip family: chars NULL strips whitespace */
static json_t *strip(struct rctx *r, const json_t *v, const json_t *chars, int left, int right)
{
	const char *s = json_string_value(v);
	size_t a = 0, b = json_string_length(v);
	if (!chars || json_is_null(chars)) {
		trim_range(s, &a, &b, left, right);
	} else {
		const char *cs = json_string_value(chars);
		size_t nc = json_string_length(chars);
		while (left && a < b && in_chars(cs, nc, s + a, cp_len(s + a)))
			a += cp_len(s + a);
		while (right && b > a) {
			size_t i = b - 1;
			while (i > a && ((unsigned char)s[i] & 0xC0) == 0x80)
				i--;
			if (!in_chars(cs, nc, s + i, b - i))
				break;
			b = i;
		}
	}
	return mkstr(r, s + a, b - a);
}

static json_t *case_map(struct rctx *r, const json_t *v, int mode) /* 0 lower 1 upper 2 title 3 cap */
{
	size_t n = json_string_length(v);
	char *q = malloc(n + 1);
	if (!q) {
		rerr(r, NULL, "out of memory");
		return NULL;
	}
	memcpy(q, json_string_value(v), n);
	int prev_alpha = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)q[i];
		int up = mode == 1 || (mode == 2 && !prev_alpha) || (mode == 3 && i == 0);
		if (mode != 3 || i == 0) /* JS capitalize keeps the rest as it is */
			q[i] = (char)(up ? toupper(c) : tolower(c));
		prev_alpha = isalnum(c) || c >= 0x80;
	}
	json_t *res = mkstr(r, q, n);
	free(q);
	return res;
}

static json_t *split(struct rctx *r, const struct node *n, const json_t *v, const json_t *sep,
		     const json_t *maxsplit)
{
	const char *s = json_string_value(v);
	size_t len = json_string_length(v), i = 0;
	long long max = maxsplit && json_is_integer(maxsplit) ? json_integer_value(maxsplit) : -1;
	json_t *res = json_array();
	if (!res) {
		rerr(r, n, "out of memory");
		return NULL;
	}
	if (!sep || json_is_null(sep)) {
		while (i < len) {
			size_t l;
			while (i < len && (l = uws_len(s + i, len - i)))
				i += l;
			if (i >= len)
				break;
			size_t st = i;
			if (max == 0) {
				size_t a = i, b = len;
				trim_range(s, &a, &b, 0, 1);
				json_array_append_new(res, json_stringn_nocheck(s + a, b - a));
				break;
			}
			while (i < len && !uws_len(s + i, len - i))
				i++;
			json_array_append_new(res, json_stringn_nocheck(s + st, i - st));
			if (max > 0)
				max--;
		}
		return res;
	}
	if (!json_is_string(sep) || !json_string_length(sep)) {
		json_decref(res);
		rerr(r, n, "split: the separator must be a non-empty string");
		return NULL;
	}
	const char *p = json_string_value(sep);
	size_t pl = json_string_length(sep);
	for (;;) {
		const char *f = max == 0 ? NULL : memmem(s + i, len - i, p, pl);
		if (!f) {
			json_array_append_new(res, json_stringn_nocheck(s + i, len - i));
			break;
		}
		json_array_append_new(res, json_stringn_nocheck(s + i, (size_t)(f - s) - i));
		i = (size_t)(f - s) + pl;
		if (max > 0)
			max--;
	}
	return res;
}

static json_t *replace(struct rctx *r, const struct node *n, const json_t *v, const json_t *a,
		       const json_t *b, const json_t *cnt)
{
	if (!json_is_string(a) || !json_is_string(b)) {
		rerr(r, n, "replace: arguments must be strings");
		return NULL;
	}
	const char *s = json_string_value(v), *p = json_string_value(a);
	size_t len = json_string_length(v), pl = json_string_length(a), i = 0;
	long long max = cnt && json_is_integer(cnt) ? json_integer_value(cnt) : -1;
	struct sbuf o = { 0 };
	if (!pl) {
		/* Python: insert b between every character */
		for (; i <= len && max != 0; max--) {
			sb_add(&o, json_string_value(b), json_string_length(b));
			if (i == len) {
				i++;
				break;
			}
			size_t m = cp_len(s + i);
			sb_add(&o, s + i, m);
			i += m;
		}
		if (i < len)
			sb_add(&o, s + i, len - i);
	} else {
		while (max != 0) {
			const char *f = memmem(s + i, len - i, p, pl);
			if (!f)
				break;
			sb_add(&o, s + i, (size_t)(f - s) - i);
			sb_add(&o, json_string_value(b), json_string_length(b));
			i = (size_t)(f - s) + pl;
			if (max > 0)
				max--;
		}
		sb_add(&o, s + i, len - i);
	}
	json_t *res = o.oom ? NULL : json_stringn_nocheck(o.p ? o.p : "", o.n);
	free(o.p);
	if (!res)
		rerr(r, n, "out of memory");
	return res;
}

static json_t *items_of(struct rctx *r, const struct node *n, const json_t *v)
{
	if (!json_is_object(v)) {
		rerr(r, n, "items: a %s is not a mapping", tname(v));
		return NULL;
	}
	json_t *res = json_array();
	const char *k;
	json_t *x;
	json_object_foreach((json_t *)v, k, x) {
		json_t *pair = json_array();
		json_array_append_new(pair, json_string_nocheck(k));
		json_array_append(pair, x);
		json_array_append_new(res, pair);
	}
	return res;
}

static json_t *method(struct rctx *r, const struct node *n, json_t *self, const char *m, struct args *a)
{
	json_t *a0 = arg(a, 0, "x"), *a1 = arg(a, 1, "y");
	if (json_is_string(self)) {
		/* @huggingface/jinja ignores the characters argument and strips
		 * whitespace (Python's Jinja strips those characters) */
		if (!strcmp(m, "strip"))
			return strip(r, self, NULL, 1, 1);
		if (!strcmp(m, "lstrip"))
			return strip(r, self, NULL, 1, 0);
		if (!strcmp(m, "rstrip"))
			return strip(r, self, NULL, 0, 1);
		if (!strcmp(m, "lower"))
			return case_map(r, self, 0);
		if (!strcmp(m, "upper"))
			return case_map(r, self, 1);
		if (!strcmp(m, "title"))
			return case_map(r, self, 2);
		if (!strcmp(m, "capitalize"))
			return case_map(r, self, 3);
		if (!strcmp(m, "split"))
			return split(r, n, self, a0 ? a0 : kwarg(a, "sep"), a1 ? a1 : kwarg(a, "maxsplit"));
		if (!strcmp(m, "replace"))
			return replace(r, n, self, a0, a1, arg(a, 2, "count"));
		if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
			int end = m[0] == 'e';
			const char *s = json_string_value(self);
			size_t len = json_string_length(self);
			json_t *list = a0;
			size_t cnt = json_is_array(a0) ? json_array_size(a0) : 1;
			for (size_t i = 0; i < cnt; i++) {
				json_t *x = json_is_array(list) ? json_array_get(list, i) : a0;
				if (!json_is_string(x)) {
					rerr(r, n, "%s: the argument must be a string", m);
					return NULL;
				}
				size_t pl = json_string_length(x);
				if (pl <= len && !memcmp(s + (end ? len - pl : 0), json_string_value(x), pl))
					return json_true();
			}
			return json_false();
		}
	} else if (json_is_object(self)) {
		if (!strcmp(m, "get")) {
			if (!json_is_string(a0)) {
				rerr(r, n, "get: the key must be a string");
				return NULL;
			}
			json_t *x = json_object_get(self, json_string_value(a0));
			return json_incref(x ? x : a1 ? a1 : json_null());
		}
		if (!strcmp(m, "items"))
			return items_of(r, n, self);
		if (!strcmp(m, "keys") || !strcmp(m, "values")) {
			json_t *res = json_array();
			const char *k;
			json_t *x;
			json_object_foreach(self, k, x)
				json_array_append_new(res, m[0] == 'k' ? json_string_nocheck(k) : json_incref(x));
			return res;
		}
	}
	rerr(r, n, "unknown method '%s' of a %s", m, tname(self));
	return NULL;
}

static long long length_of(struct rctx *r, const struct node *n, const json_t *v)
{
	if (json_is_string(v)) {
		size_t c = 0;
		const char *s = json_string_value(v);
		for (size_t i = 0; i < json_string_length(v); i++) /* UTF-16 units, as JS */
			c += (((unsigned char)s[i] & 0xC0) != 0x80) + ((unsigned char)s[i] >= 0xF0);
		return (long long)c;
	}
	if (json_is_array(v))
		return (long long)json_array_size(v);
	if (json_is_object(v))
		return (long long)json_object_size(v);
	rerr(r, n, "cannot take the length of a %s", tname(v));
	return 0;
}

static int test_value(struct rctx *r, const struct node *n, const char *t, json_t *v,
		      json_t *other);

/* selectattr/rejectattr(attr[, test[, value]]) on a list of objects, as
 * @huggingface/jinja: an item without attr is rejected by selectattr. */
static json_t *select_attr(struct rctx *r, const struct node *n, json_t *v, struct args *a,
			   bool select)
{
	json_t *attr = arg(a, 0, "attr"), *t = arg(a, 1, "test"), *res = json_array();
	if (!json_is_string(attr) || (t && !json_is_string(t))) {
		rerr(r, n, "%s: the attribute and the test must be strings", n->s);
		json_decref(res);
		return NULL;
	}
	for (size_t i = 0; res && !r->failed && i < json_array_size(v); i++) {
		json_t *item = json_array_get(v, i);
		if (!json_is_object(item)) {
			rerr(r, n, "%s can only be applied to a list of objects", n->s);
			break;
		}
		json_t *x = json_object_get(item, json_string_value(attr));
		int ok = x && (t ? test_value(r, n, json_string_value(t), x, arg(a, 2, "value")) :
			       truthy(x));
		if (ok == select && json_array_append(res, item))
			rerr(r, n, "out of memory");
	}
	if (r->failed) {
		json_decref(res);
		return NULL;
	}
	return res;
}

/* map(attribute=name[, default=value]) on a list of objects. */
static json_t *map_attr(struct rctx *r, const struct node *n, json_t *v, struct args *a)
{
	json_t *attr = kwarg(a, "attribute"), *def = kwarg(a, "default"), *res = json_array();
	if (!json_is_string(attr)) {
		rerr(r, n, "map: only map(attribute='name') is supported");
		json_decref(res);
		return NULL;
	}
	for (size_t i = 0; res && !r->failed && i < json_array_size(v); i++) {
		json_t *item = json_array_get(v, i);
		json_t *x = json_is_object(item) ? json_object_get(item, json_string_value(attr)) : NULL;
		if (!json_is_object(item))
			rerr(r, n, "map: the items must be objects");
		else if (!x && !def)
			rerr(r, n, "map: an item has no '%s' (and no default)", json_string_value(attr));
		else if (json_array_append(res, x ? x : def))
			rerr(r, n, "out of memory");
	}
	if (r->failed) {
		json_decref(res);
		return NULL;
	}
	return res;
}

/* The next UTF-16 unit of s[*i..n) (*low: a pending low surrogate). */
static unsigned utf16_next(const char *s, size_t n, size_t *i, unsigned *low, bool fold)
{
	if (*low) {
		unsigned u = *low;
		*low = 0;
		return u;
	}
	const unsigned char *p = (const unsigned char *)s + *i;
	unsigned cp = p[0], k = cp < 0x80 ? 1 : cp < 0xE0 ? 2 : cp < 0xF0 ? 3 : 4;
	if (*i + k > n)
		k = 1;
	if (k > 1)
		cp &= 0x3Fu >> (k - 1);
	for (unsigned j = 1; j < k; j++)
		cp = cp << 6 | (p[j] & 0x3F);
	*i += k;
	if (fold && cp < 0x80)
		cp = (unsigned)tolower((int)cp);
	if (cp < 0x10000)
		return cp;
	*low = 0xDC00 + ((cp - 0x10000) & 0x3FF);
	return 0xD800 + ((cp - 0x10000) >> 10);
}

/* JavaScript's string order (UTF-16 units); fold: ASCII letters lowered. */
static int utf16_cmp(const json_t *a, const json_t *b, bool fold)
{
	const char *x = json_string_value(a), *y = json_string_value(b);
	size_t nx = json_string_length(a), ny = json_string_length(b), i = 0, j = 0;
	unsigned lx = 0, ly = 0;
	while ((i < nx || lx) && (j < ny || ly)) {
		unsigned u = utf16_next(x, nx, &i, &lx, fold), w = utf16_next(y, ny, &j, &ly, fold);
		if (u != w)
			return u < w ? -1 : 1;
	}
	return (i < nx || lx) ? 1 : (j < ny || ly) ? -1 : 0;
}

/* The reference's compareRuntimeValues: numbers and booleans by value,
 * strings by UTF-16 units, none with none and undefined with undefined
 * equal; anything else an error. */
static int sort_cmp(struct rctx *r, const struct node *n, const json_t *a, const json_t *b,
		    bool case_sensitive)
{
	bool na = a && json_is_null(a), nb = b && json_is_null(b);
	if (na || nb || !a || !b) {
		if ((na && nb) || (!a && !b))
			return 0;
		rerr(r, n, "sort: cannot compare a %s with a %s", tname(a), tname(b));
		return 0;
	}
	if ((is_num(a) || json_is_boolean(a)) && (is_num(b) || json_is_boolean(b))) {
		double x = json_is_boolean(a) ? json_is_true(a) : json_number_value(a);
		double y = json_is_boolean(b) ? json_is_true(b) : json_number_value(b);
		return x < y ? -1 : x > y;
	}
	if (json_is_string(a) && json_is_string(b))
		return utf16_cmp(a, b, !case_sensitive);
	rerr(r, n, "sort: cannot compare a %s with a %s", tname(a), tname(b));
	return 0;
}

/* item's attribute path ("a.b", "k.0": dict keys and list indexes), or
 * NULL (undefined). */
static json_t *attr_path(json_t *item, const char *path)
{
	char part[256];
	while (item && *path) {
		size_t k = strcspn(path, ".");
		snprintf(part, sizeof(part), "%.*s", (int)k, path);
		if (json_is_object(item)) {
			item = json_object_get(item, part);
		} else if (json_is_array(item)) {
			char *end;
			long i = strtol(part, &end, 10);
			item = *part && !*end && i >= 0 ? json_array_get(item, (size_t)i) : NULL;
		} else {
			item = NULL;
		}
		path += k + (path[k] == '.');
	}
	return item;
}

/* sort(reverse=false, case_sensitive=false, attribute=none), stable as
 * JavaScript's Array sort. */
static json_t *sort_list(struct rctx *r, const struct node *n, json_t *v, struct args *a)
{
	json_t *rev = arg(a, 0, "reverse"), *cs = arg(a, 1, "case_sensitive");
	json_t *at = arg(a, 2, "attribute");
	if ((rev && !json_is_boolean(rev)) || (cs && !json_is_boolean(cs)) ||
	    (at && !json_is_string(at) && !json_is_integer(at) && !json_is_null(at))) {
		rerr(r, n, "sort: reverse and case_sensitive must be booleans, attribute a string, "
		     "an integer or none");
		return NULL;
	}
	char path[32];
	const char *key = at && json_is_string(at) ? json_string_value(at) : NULL;
	if (at && json_is_integer(at)) {
		snprintf(path, sizeof(path), "%lld", (long long)json_integer_value(at));
		key = path;
	}
	size_t m = json_array_size(v);
	json_t **item = malloc(sizeof(json_t *) * (m ? m : 1));
	if (!item) {
		rerr(r, n, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < m; i++) {
		item[i] = json_array_get(v, i);
		for (size_t j = i; j > 0 && !r->failed; j--) {  /* insertion: stable */
			json_t *x = key ? attr_path(item[j - 1], key) : item[j - 1];
			json_t *y = key ? attr_path(item[j], key) : item[j];
			int c = sort_cmp(r, n, x, y, cs && json_is_true(cs));
			if ((rev && json_is_true(rev) ? -c : c) <= 0)
				break;
			json_t *t = item[j];
			item[j] = item[j - 1];
			item[j - 1] = t;
		}
	}
	json_t *res = r->failed ? NULL : json_array();
	for (size_t i = 0; res && i < m; i++)
		if (json_array_append(res, item[i]))
			rerr(r, n, "out of memory");
	free(item);
	if (r->failed) {
		json_decref(res);
		return NULL;
	}
	return res;
}

static json_t *filter(struct rctx *r, struct scope *sc, const struct node *n, json_t *v)
{
	const char *f = n->s;
	struct args a;
	if (args_eval(r, sc, n, &a)) {
		args_free(&a);
		return NULL;
	}
	json_t *res = NULL;
	if (!strcmp(f, "default") || !strcmp(f, "d")) {
		json_t *b = arg(&a, 1, "boolean");
		int use = b && truthy(b) ? !truthy(v) : !v;
		json_t *d = arg(&a, 0, "default_value");
		res = use ? json_incref(d ? d : NULL) : json_incref(v);
		if (use && !d)
			res = json_string("");
		goto done;
	}
	if (!v) {
		rerr(r, n, "cannot apply filter '%s' to an undefined value", f);
		goto done;
	}
	if (!strcmp(f, "trim") && json_is_string(v))
		res = strip(r, v, arg(&a, 0, "chars"), 1, 1);
	else if ((!strcmp(f, "upper") || !strcmp(f, "lower") || !strcmp(f, "title") ||
		  !strcmp(f, "capitalize")) && json_is_string(v))
		res = case_map(r, v, f[0] == 'l' ? 0 : f[0] == 'u' ? 1 : f[0] == 't' ? 2 : 3);
	else if (!strcmp(f, "length") || !strcmp(f, "count")) {
		long long l = length_of(r, n, v);
		res = r->failed ? NULL : json_integer(l);
	} else if (!strcmp(f, "tojson")) {
		json_t *ind = arg(&a, 0, "indent");
		struct sbuf b = { 0 };
		to_json(&b, v, ind && json_is_integer(ind) ? (int)json_integer_value(ind) : 0, 0);
		res = mkstr(r, b.p ? b.p : "", b.n);
		free(b.p);
	} else if (!strcmp(f, "string")) {
		res = str_of(r, v);
	} else if (!strcmp(f, "safe")) {
		res = json_incref(v);
	} else if (!strcmp(f, "int")) {
		if (json_is_integer(v))
			res = json_incref(v);
		else if (json_is_real(v))
			res = json_integer((json_int_t)json_real_value(v));
		else if (json_is_string(v)) {
			char *e;
			long long x = strtoll(json_string_value(v), &e, 10);
			res = json_integer(*e ? 0 : x);
		} else if (json_is_boolean(v))
			res = json_integer(json_is_true(v));
		else
			rerr(r, n, "int: cannot convert a %s", tname(v));
	} else if (!strcmp(f, "float")) {
		res = is_num(v) ? json_real(json_number_value(v)) : json_real(0);
	} else if (!strcmp(f, "abs") && is_num(v)) {
		res = json_is_integer(v) ? json_integer(llabs(json_integer_value(v)))
					 : json_real(fabs(json_real_value(v)));
	} else if ((!strcmp(f, "first") || !strcmp(f, "last")) && (json_is_array(v) || json_is_string(v))) {
		long long L = length_of(r, n, v);
		json_t *k = json_integer(f[0] == 'f' ? 0 : L - 1);
		res = L ? subscript(r, n, v, k) : NULL;
		json_decref(k);
	} else if (!strcmp(f, "join") && json_is_array(v) && kwarg(&a, "attribute")) {
		rerr(r, n, "join: attribute= is not supported (use map(attribute=...) | join)");
	} else if (!strcmp(f, "join") && json_is_array(v)) {
		json_t *sep = arg(&a, 0, "d");
		struct sbuf b = { 0 };
		for (size_t i = 0; i < json_array_size(v); i++) {
			json_t *x = json_array_get(v, i);
			if (i && sep)
				to_str(&b, sep);
			if (json_is_array(x))   /* JavaScript's Array join: its items, ',' */
				for (size_t k = 0; k < json_array_size(x); k++) {
					if (k)
						sb_str(&b, ",");
					to_str(&b, json_array_get(x, k));
				}
			else
				to_str(&b, x);
		}
		res = mkstr(r, b.p ? b.p : "", b.n);
		free(b.p);
	} else if ((!strcmp(f, "selectattr") || !strcmp(f, "rejectattr")) && json_is_array(v)) {
		res = select_attr(r, n, v, &a, f[0] == 's');
	} else if (!strcmp(f, "map") && json_is_array(v)) {
		res = map_attr(r, n, v, &a);
	} else if (!strcmp(f, "sort") && json_is_array(v)) {
		res = sort_list(r, n, v, &a);
	} else if (!strcmp(f, "unique") && json_is_array(v)) {
		res = json_array();
		for (size_t i = 0; res && i < json_array_size(v); i++) {
			json_t *x = json_array_get(v, i);
			int seen = 0;
			for (size_t k = 0; k < json_array_size(res) && !seen; k++)
				seen = json_equal(json_array_get(res, k), x) && !json_is_object(x) &&
				       !json_is_array(x);
			if (!seen)
				json_array_append(res, x);
		}
	} else if (!strcmp(f, "replace") && json_is_string(v)) {
		res = replace(r, n, v, arg(&a, 0, "old"), arg(&a, 1, "new"), arg(&a, 2, "count"));
	} else if (!strcmp(f, "items")) {
		res = items_of(r, n, v);
	} else if (!strcmp(f, "list")) {
		if (json_is_array(v))
			res = json_incref(v);
		else if (json_is_object(v))
			res = method(r, n, v, "keys", &a);
		else if (json_is_string(v))
			res = do_slice(r, n, v, NULL, NULL, NULL);
		else
			rerr(r, n, "list: cannot convert a %s", tname(v));
	} else if (!strcmp(f, "reverse") && (json_is_array(v) || json_is_string(v))) {
		json_t *m1 = json_integer(-1);
		res = do_slice(r, n, v, NULL, NULL, m1);
		json_decref(m1);
	} else {
		rerr(r, n, "unknown filter '%s' for a %s", f, tname(v));
	}
done:
	args_free(&a);
	return res;
}

/* The test named t on v (other: its argument, if any); n for errors. */
static int test_value(struct rctx *r, const struct node *n, const char *t, json_t *v, json_t *other)
{
	int res = 0;
	if (!strcmp(t, "defined"))
		res = v != NULL;
	else if (!strcmp(t, "undefined"))
		res = v == NULL;
	else if (!strcmp(t, "none"))
		res = v && json_is_null(v);
	else if (!strcmp(t, "string"))
		res = v && json_is_string(v);
	else if (!strcmp(t, "number"))
		res = is_num(v);
	else if (!strcmp(t, "integer"))
		res = v && json_is_integer(v);
	else if (!strcmp(t, "float"))
		res = v && json_is_real(v);
	else if (!strcmp(t, "boolean"))
		res = v && json_is_boolean(v);
	else if (!strcmp(t, "true"))
		res = v && json_is_true(v);
	else if (!strcmp(t, "false"))
		res = v && json_is_false(v);
	else if (!strcmp(t, "mapping"))
		res = v && json_is_object(v);
	else if (!strcmp(t, "iterable"))
		res = v && (json_is_array(v) || json_is_string(v));
	else if (!strcmp(t, "sequence"))
		res = v && (json_is_array(v) || json_is_string(v) || json_is_object(v));
	else if (!strcmp(t, "callable"))
		res = 0;
	else if ((!strcmp(t, "odd") || !strcmp(t, "even"))) {
		if (!v || !json_is_integer(v))
			rerr(r, n, "cannot test '%s' on a %s", t, tname(v));
		else
			res = (json_integer_value(v) % 2 != 0) == (t[0] == 'o');
	} else if (!strcmp(t, "lower") || !strcmp(t, "upper")) {
		if (v && json_is_string(v)) {
			json_t *c = case_map(r, v, t[0] == 'u');
			res = c && json_equal(c, v);
			json_decref(c);
		}
	} else if (!strcmp(t, "equalto") || !strcmp(t, "eq") || !strcmp(t, "sameas"))
		res = values_equal(v, other);
	else
		rerr(r, n, "unknown test '%s'", t);
	return res;
}

static int test(struct rctx *r, struct scope *sc, const struct node *n, json_t *v)
{
	struct args a;
	int res = 0;
	if (!args_eval(r, sc, n, &a))
		res = test_value(r, n, n->s, v, arg(&a, 0, "other"));
	args_free(&a);
	return res;
}

static json_t *concat(struct rctx *r, const json_t *a, const json_t *b)
{
	struct sbuf t = { 0 };
	js_str(&t, a);
	js_str(&t, b);
	json_t *res = t.oom ? NULL : json_stringn_nocheck(t.p ? t.p : "", t.n);
	free(t.p);
	if (!res)
		rerr(r, NULL, "out of memory");
	return res;
}

static json_t *binary(struct rctx *r, const struct node *n, json_t *a, json_t *b)
{
	const char *op = n->s;
	if (!strcmp(op, "==") || !strcmp(op, "!="))
		return json_boolean(values_equal(a, b) == (op[0] == '='));
	if (!strcmp(op, "in")) {
		int found = 0;
		if (json_is_string(b) && json_is_string(a))
			found = memmem(json_string_value(b), json_string_length(b), json_string_value(a),
				       json_string_length(a)) != NULL || !json_string_length(a);
		else if (json_is_array(b)) {
			for (size_t i = 0; i < json_array_size(b) && !found; i++)
				found = values_equal(a, json_array_get(b, i));
		} else if (json_is_object(b) && json_is_string(a))
			found = json_object_get(b, json_string_value(a)) != NULL;
		else if (!b || json_is_null(b))
			found = 0;
		else {
			rerr(r, n, "cannot test a %s in a %s", tname(a), tname(b));
			return NULL;
		}
		return json_boolean(found != n->neg);
	}
	int numeric = is_num(a) && is_num(b) && strcmp(op, "~") && strcmp(op, "**");
	if (!numeric && (!a || !b)) {
		if (!strcmp(op, "~") && !json_is_null(a ? a : b))
			return concat(r, a, b);
		rerr(r, n, "cannot perform operation %s on undefined values", op);
		return NULL;
	}
	if (!numeric && (json_is_null(a) || json_is_null(b))) {
		rerr(r, n, "cannot perform operation %s on null values", op);
		return NULL;
	}
	if (!strcmp(op, "~") || (!strcmp(op, "+") && (json_is_string(a) || json_is_string(b))))
		return concat(r, a, b);
	if (!strcmp(op, "+") && json_is_array(a) && json_is_array(b)) {
		json_t *res = json_copy(a);
		json_array_extend(res, b);
		return res;
	}
	if (op[0] == '<' || op[0] == '>') {
		int c;
		if (is_num(a) && is_num(b)) {
			double x = json_number_value(a), y = json_number_value(b);
			c = x < y ? -1 : x > y;
		} else if (json_is_string(a) && json_is_string(b)) {
			c = strcmp(json_string_value(a), json_string_value(b));
		} else {
			rerr(r, n, "cannot compare a %s with a %s", tname(a), tname(b));
			return NULL;
		}
		int res = op[0] == '<' ? (op[1] ? c <= 0 : c < 0) : (op[1] ? c >= 0 : c > 0);
		return json_boolean(res);
	}
	if (!is_num(a) || !is_num(b)) {
		rerr(r, n, "unsupported operand types for %s: %s and %s", op, tname(a), tname(b));
		return NULL;
	}
	int ints = json_is_integer(a) && json_is_integer(b);
	double x = json_number_value(a), y = json_number_value(b);
	if (ints && op[0] != '/' && strcmp(op, "**")) {
		long long i = json_integer_value(a), j = json_integer_value(b);
		switch (op[0]) {
		case '+': return json_integer(i + j);
		case '-': return json_integer(i - j);
		case '*': return json_integer(i * j);
		case '%':
			if (!j) {
				rerr(r, n, "modulo by zero");
				return NULL;
			}
			return json_integer(i % j);
		}
	}
	if ((op[0] == '/' || op[0] == '%') && y == 0) {
		rerr(r, n, "division by zero");
		return NULL;
	}
	if (!strcmp(op, "//")) {
		double q = floor(x / y);
		return ints ? json_integer((json_int_t)q) : json_real(q);
	}
	if (!strcmp(op, "**")) {
		double q = pow(x, y);
		return ints && y >= 0 ? json_integer((json_int_t)q) : json_real(q);
	}
	switch (op[0]) {
	case '+': return json_real(x + y);
	case '-': return json_real(x - y);
	case '*': return json_real(x * y);
	case '/': return json_real(x / y);
	case '%': return json_real(fmod(x, y));
	}
	rerr(r, n, "unknown operator %s", op);
	return NULL;
}

static json_t *call_macro(struct rctx *r, struct scope *s, const struct node *m, const struct node *call);

static json_t *call(struct rctx *r, struct scope *s, const struct node *n)
{
	const struct node *f = n->a;
	json_t *res = NULL;
	struct args a;
	if (f->k == N_ATTR) {
		json_t *self = eval(r, s, f->a);
		if (r->failed)
			return NULL;
		if (!self) {
			rerr(r, n, "cannot call '%s' of an undefined value", f->s);
			return NULL;
		}
		if (!args_eval(r, s, n, &a))
			res = method(r, n, self, f->s, &a);
		args_free(&a);
		json_decref(self);
		return res;
	}
	if (f->k != N_NAME) {
		rerr(r, n, "this expression cannot be called");
		return NULL;
	}
	for (size_t i = r->nmacros; i-- > 0;)
		if (!strcmp(r->macros[i]->s, f->s))
			return call_macro(r, s, r->macros[i], n);
	if (args_eval(r, s, n, &a)) {
		args_free(&a);
		return NULL;
	}
	if (!strcmp(f->s, "raise_exception")) {
		struct sbuf b = { 0 };
		to_str(&b, arg(&a, 0, "message"));
		rerr(r, n, "%s", b.p ? b.p : "raise_exception");
		free(b.p);
	} else if (!strcmp(f->s, "namespace")) {
		res = json_object();
		for (size_t i = 0; i < a.nk; i++)
			json_object_set(res, a.kn[i], a.kv[i] ? a.kv[i] : json_null());
	} else if (!strcmp(f->s, "range")) {
		long long lo = 0, hi, st = 1;
		for (size_t i = 0; i < a.np; i++)
			if (!json_is_integer(a.pos[i])) {
				rerr(r, n, "range: arguments must be integers");
				goto done;
			}
		if (a.np == 1) {
			hi = json_integer_value(a.pos[0]);
		} else if (a.np >= 2) {
			lo = json_integer_value(a.pos[0]);
			hi = json_integer_value(a.pos[1]);
			if (a.np > 2)
				st = json_integer_value(a.pos[2]);
		} else {
			rerr(r, n, "range: expected 1 to 3 arguments");
			goto done;
		}
		if (!st || (hi - lo) / st > 1000000) {
			rerr(r, n, "range: bad step or too long");
			goto done;
		}
		res = json_array();
		for (long long i = lo; st > 0 ? i < hi : i > hi; i += st)
			json_array_append_new(res, json_integer(i));
	} else if (!strcmp(f->s, "strftime_now")) {
		json_t *fmt = arg(&a, 0, "format");
		char buf[256];
		time_t now = time(NULL);
		struct tm tm;
		if (!json_is_string(fmt) || !localtime_r(&now, &tm) ||
		    !strftime(buf, sizeof buf, json_string_value(fmt), &tm))
			buf[0] = 0;
		res = mkstr(r, buf, strlen(buf));
	} else {
		rerr(r, n, "'%s' is not a function", f->s);
	}
done:
	args_free(&a);
	return res;
}

static int assign(struct rctx *r, struct scope *s, const struct node *tg, json_t *v)
{
	if (tg->k == N_NAME)
		return json_object_set(s->vars, tg->s, v ? v : json_null()) ? -1 : 0;
	if (tg->k == N_ATTR) {
		json_t *o = lookup(s, tg->a->s);
		int rc = 0;
		if (!json_is_object(o)) {
			rerr(r, tg, "cannot set attribute '%s' of a %s", tg->s, tname(o));
			rc = -1;
		} else {
			json_object_set(o, tg->s, v ? v : json_null());
		}
		json_decref(o);
		return rc;
	}
	/* tuple */
	if (!json_is_array(v) || json_array_size(v) != tg->nv) {
		rerr(r, tg, "cannot unpack a %s into %zu names", tname(v), tg->nv);
		return -1;
	}
	for (size_t i = 0; i < tg->nv; i++)
		json_object_set(s->vars, tg->v[i]->s, json_array_get(v, i));
	return 0;
}

static json_t *call_macro(struct rctx *r, struct scope *s, const struct node *m, const struct node *call)
{
	struct args a;
	if (args_eval(r, s, call, &a)) {
		args_free(&a);
		return NULL;
	}
	if (r->depth > 50) {
		rerr(r, call, "macro calls nested too deeply");
		args_free(&a);
		return NULL;
	}
	/* the macro sees its arguments, then the caller's variables */
	struct scope ms = { json_object(), s };
	size_t np = m->nv;
	for (size_t i = 0; i < np; i++) {
		const char *pn = m->v[i]->s;
		json_t *v = arg(&a, i, pn);
		if (v)
			json_object_set(ms.vars, pn, v);
	}
	for (size_t i = 0; i < m->nw; i++) {
		const char *pn = m->w[i]->s;
		json_t *v = arg(&a, np + i, pn);
		if (v) {
			json_object_set(ms.vars, pn, v);
		} else {
			json_t *d = eval(r, s, m->w[i]->a);
			if (d)
				json_object_set_new(ms.vars, pn, d);
		}
	}
	args_free(&a);
	struct sbuf out = { 0 }, *saved = r->out;
	r->out = &out;
	r->depth++;
	exec_body(r, &ms, m->d->v, m->d->nv);
	r->depth--;
	r->out = saved;
	json_decref(ms.vars);
	json_t *res = r->failed ? NULL : mkstr(r, out.p ? out.p : "", out.n);
	free(out.p);
	return res;
}

static json_t *eval(struct rctx *r, struct scope *s, const struct node *n)
{
	json_t *a = NULL, *b = NULL, *c = NULL, *res = NULL;
	if (r->failed)
		return NULL;
	switch (n->k) {
	case N_LIT:
		return json_incref(n->lit);
	case N_NAME:
		return lookup(s, n->s);
	case N_LIST:
	case N_TUPLE:
		res = json_array();
		for (size_t i = 0; i < n->nv && !r->failed; i++) {
			json_t *x = eval(r, s, n->v[i]);
			json_array_append_new(res, x ? x : json_null());
		}
		break;
	case N_DICT:
		res = json_object();
		for (size_t i = 0; i < n->nv && !r->failed; i++) {
			a = eval(r, s, n->v[i]);
			b = eval(r, s, n->w[i]);
			if (!json_is_string(a))
				rerr(r, n->v[i], "dict keys must be strings, not %s", tname(a));
			else
				json_object_set(res, json_string_value(a), b ? b : json_null());
			json_decref(a);
			json_decref(b);
			a = b = NULL;
		}
		break;
	case N_ATTR:
		a = eval(r, s, n->a);
		if (r->failed)
			break;
		if (!a)
			rerr(r, n, "cannot read '%s' of an undefined value", n->s);
		else if (json_is_object(a))
			res = json_incref(json_object_get(a, n->s));
		else if (json_is_array(a) && !strcmp(n->s, "length"))
			res = json_integer((json_int_t)json_array_size(a));
		break;
	case N_INDEX:
		a = eval(r, s, n->a);
		b = eval(r, s, n->b);
		if (!r->failed)
			res = subscript(r, n, a, b);
		break;
	case N_SLICE: {
		json_t *d = NULL;
		a = eval(r, s, n->a);
		b = n->b ? eval(r, s, n->b) : NULL;
		c = n->c ? eval(r, s, n->c) : NULL;
		d = n->d ? eval(r, s, n->d) : NULL;
		if (!r->failed) {
			if (!a)
				rerr(r, n, "cannot slice an undefined value");
			else
				res = do_slice(r, n, a, b, c, d);
		}
		json_decref(d);
		break;
	}
	case N_CALL:
		res = call(r, s, n);
		break;
	case N_FILTER:
		a = eval(r, s, n->a);
		if (!r->failed)
			res = filter(r, s, n, a);
		break;
	case N_TEST:
		a = eval(r, s, n->a);
		if (!r->failed) {
			int t = test(r, s, n, a);
			res = json_boolean(t != n->neg);
		}
		break;
	case N_NOT:
		a = eval(r, s, n->a);
		res = json_boolean(!truthy(a));
		break;
	case N_NEG:
		a = eval(r, s, n->a);
		if (json_is_integer(a))
			res = json_integer(-json_integer_value(a));
		else if (json_is_real(a))
			res = json_real(-json_real_value(a));
		else
			rerr(r, n, "cannot negate a %s", tname(a));
		break;
	case N_AND:
		a = eval(r, s, n->a);
		if (!truthy(a))
			return a;
		json_decref(a);
		return eval(r, s, n->b);
	case N_OR:
		a = eval(r, s, n->a);
		if (truthy(a))
			return a;
		json_decref(a);
		return eval(r, s, n->b);
	case N_COND:
		b = eval(r, s, n->b);
		if (truthy(b))
			res = eval(r, s, n->a);
		else if (n->c)
			res = eval(r, s, n->c);
		break;
	case N_BIN:
		a = eval(r, s, n->a);
		b = eval(r, s, n->b);
		if (!r->failed)
			res = binary(r, n, a, b);
		break;
	default:
		rerr(r, n, "internal: not an expression");
	}
	json_decref(a);
	json_decref(b);
	json_decref(c);
	if (r->failed) {
		json_decref(res);
		return NULL;
	}
	return res;
}

static void exec_for(struct rctx *r, struct scope *s, const struct node *n)
{
	json_t *it = eval(r, s, n->b), *items = NULL;
	if (r->failed)
		return;
	if (json_is_array(it))
		items = json_incref(it);
	else if (json_is_object(it)) {
		struct args none = { 0 };
		items = method(r, n, it, "keys", &none);
	} else if (json_is_string(it))
		items = do_slice(r, n, it, NULL, NULL, NULL);
	else
		rerr(r, n->b, "cannot iterate over a %s", tname(it));
	json_decref(it);
	if (r->failed) {
		json_decref(items);
		return;
	}
	/* the loop filter applies before loop.* is computed */
	if (n->c) {
		json_t *kept = json_array();
		for (size_t i = 0; i < json_array_size(items) && !r->failed; i++) {
			struct scope fs = { json_object(), s };
			assign(r, &fs, n->a, json_array_get(items, i));
			json_t *ok = eval(r, &fs, n->c);
			if (truthy(ok))
				json_array_append(kept, json_array_get(items, i));
			json_decref(ok);
			json_decref(fs.vars);
		}
		json_decref(items);
		items = kept;
	}
	size_t L = json_array_size(items);
	for (size_t i = 0; i < L && !r->failed; i++) {
		struct scope ls = { json_object(), s };
		json_t *loop = json_object();
		json_t *item = json_array_get(items, i);
		json_object_set_new(loop, "index", json_integer((json_int_t)i + 1));
		json_object_set_new(loop, "index0", json_integer((json_int_t)i));
		json_object_set_new(loop, "revindex", json_integer((json_int_t)(L - i)));
		json_object_set_new(loop, "revindex0", json_integer((json_int_t)(L - i - 1)));
		json_object_set_new(loop, "first", json_boolean(i == 0));
		json_object_set_new(loop, "last", json_boolean(i == L - 1));
		json_object_set_new(loop, "length", json_integer((json_int_t)L));
		if (i)
			json_object_set(loop, "previtem", json_array_get(items, i - 1));
		if (i + 1 < L)
			json_object_set(loop, "nextitem", json_array_get(items, i + 1));
		json_object_set_new(ls.vars, "loop", loop);
		assign(r, &ls, n->a, item);
		exec_body(r, &ls, n->v, n->nv);
		json_decref(ls.vars);
		if (r->ctl == 1) {
			r->ctl = 0;
			break;
		}
		r->ctl = 0;
	}
	if (!L && !r->failed && n->nw) {
		struct scope es = { json_object(), s };
		exec_body(r, &es, n->w, n->nw);
		json_decref(es.vars);
	}
	json_decref(items);
}

static void exec_body(struct rctx *r, struct scope *s, struct node *const *v, size_t nv)
{
	for (size_t i = 0; i < nv && !r->failed && !r->ctl; i++) {
		const struct node *n = v[i];
		json_t *x;
		switch (n->k) {
		case N_TEXT:
			sb_add(r->out, json_string_value(n->lit), json_string_length(n->lit));
			break;
		case N_OUT:
			x = eval(r, s, n->a);
			if (x && !json_is_null(x))
				to_str(r->out, x);
			json_decref(x);
			break;
		case N_IF:
			x = eval(r, s, n->a);
			if (r->failed)
				return;
			if (truthy(x))
				exec_body(r, s, n->v, n->nv);
			else
				exec_body(r, s, n->w, n->nw);
			json_decref(x);
			break;
		case N_FOR:
			if (++r->depth > MAX_DEPTH) {
				rerr(r, n, "loops nested too deeply");
				return;
			}
			exec_for(r, s, n);
			r->depth--;
			break;
		case N_SET:
			x = eval(r, s, n->b);
			if (!r->failed)
				assign(r, s, n->a, x);
			json_decref(x);
			break;
		case N_SETBLOCK: {
			struct sbuf b = { 0 }, *saved = r->out;
			r->out = &b;
			exec_body(r, s, n->v, n->nv);
			r->out = saved;
			x = r->failed ? NULL : mkstr(r, b.p ? b.p : "", b.n);
			free(b.p);
			if (x)
				assign(r, s, n->a, x);
			json_decref(x);
			break;
		}
		case N_MACRO: {
			struct node **q = realloc(r->macros, (r->nmacros + 1) * sizeof *q);
			if (!q) {
				rerr(r, n, "out of memory");
				return;
			}
			r->macros = q;
			q[r->nmacros++] = (struct node *)n;
			break;
		}
		case N_BREAK:
			r->ctl = 1;
			break;
		case N_CONTINUE:
			r->ctl = 2;
			break;
		default:
			rerr(r, n, "internal: not a statement");
		}
		if (r->out->oom)
			rerr(r, n, "out of memory");
	}
}

struct fw_chat_template *fw_chat_template_compile(const char *text, struct fw_err *err)
{
	struct fw_chat_template *t = calloc(1, sizeof *t);
	if (!t || !(t->src = strdup(text ? text : ""))) {
		free(t);
		fw_errorf(err, FW_ERR_NOMEM, "chat template: out of memory");
		return NULL;
	}
	char *pre = preprocess(t->src, &t->map);
	if (!pre) {
		fw_errorf(err, FW_ERR_NOMEM, "chat template: out of memory");
		fw_chat_template_free(t);
		return NULL;
	}
	int rc = lex(t, pre, t->map, err);
	free(pre);
	if (rc) {
		fw_chat_template_free(t);
		return NULL;
	}
	struct parser p = { .t = t, .err = err };
	t->root = mk(&p, N_TEXT, 0);
	if (!t->root || body(&p, &t->root->v, &t->root->nv, NULL) || p.failed) {
		if (!p.failed)
			perr(&p, "unexpected '%s'", cur(&p)->s);
		fw_chat_template_free(t);
		return NULL;
	}
	if (cur(&p)->t != T_EOF) {
		perr(&p, "unexpected statement");
		fw_chat_template_free(t);
		return NULL;
	}
	return t;
}

char *fw_chat_template_render(const struct fw_chat_template *t, const struct json_t *messages,
			      bool add_generation_prompt, const struct json_t *extra,
			      struct fw_err *err)
{
	if (!t || !messages || !json_is_array(messages) || (extra && !json_is_object(extra))) {
		fw_errorf(err, FW_ERR_INVALID,
			  "chat template: messages must be a JSON array and extra a JSON object");
		return NULL;
	}
	struct sbuf out = { 0 };
	struct rctx r = { .t = t, .err = err, .out = &out };
	struct scope g = { json_object(), NULL };
	if (!g.vars) {
		fw_errorf(err, FW_ERR_NOMEM, "chat template: out of memory");
		return NULL;
	}
	if (extra)
		json_object_update(g.vars, (json_t *)extra);
	/* a deep copy: namespace-style mutation never reaches the caller's values */
	json_object_set_new(g.vars, "messages", json_deep_copy(messages));
	json_object_set_new(g.vars, "add_generation_prompt", json_boolean(add_generation_prompt));
	exec_body(&r, &g, t->root->v, t->root->nv);
	json_decref(g.vars);
	free(r.macros);
	if (!r.failed && out.oom) {
		fw_errorf(err, FW_ERR_NOMEM, "chat template: out of memory");
		r.failed = 1;
	}
	char *res = NULL;
	if (!r.failed) {
		res = fw_malloc(out.n + 1);
		if (res) {
			if (out.n)
				memcpy(res, out.p, out.n);
			res[out.n] = 0;
		} else {
			fw_errorf(err, FW_ERR_NOMEM, "chat template: out of memory");
		}
	}
	free(out.p);
	return res;
}

char *fw_chat_template_render_json(const struct fw_chat_template *t, const char *messages_json,
				   bool add_generation_prompt, const char *extra_json,
				   struct fw_err *err)
{
	json_error_t je;
	json_t *m = json_loads(messages_json ? messages_json : "", JSON_DECODE_ANY, &je), *x = NULL;
	if (!m) {
		fw_errorf(err, FW_ERR_FORMAT, "chat template: messages: bad JSON at line %d: %s", je.line,
			  je.text);
		return NULL;
	}
	if (extra_json && !(x = json_loads(extra_json, JSON_DECODE_ANY, &je))) {
		json_decref(m);
		fw_errorf(err, FW_ERR_FORMAT, "chat template: extra variables: bad JSON at line %d: %s",
			  je.line, je.text);
		return NULL;
	}
	char *res = fw_chat_template_render(t, m, add_generation_prompt, x, err);
	json_decref(m);
	json_decref(x);
	return res;
}
