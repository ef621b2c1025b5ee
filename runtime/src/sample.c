/* sample.c - choosing the next token (fw/runtime/sample.h). */
#include <math.h>
#include <stdlib.h>

#include "fw/graph.h"
#include "fw/runtime/sample.h"

static int by_prob(const void *a, const void *b)
{
	const struct fw_rt_cand *x = a, *y = b;
	return x->p < y->p ? 1 : x->p > y->p ? -1 : x->id - y->id;
}

int64_t fw_rt_argmax(const float *x, int64_t n)
{
	int64_t best = 0;
	for (int64_t i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}

double fw_rt_logsumexp(const float *x, int64_t n)
{
	double m = x[fw_rt_argmax(x, n)], s = 0;
	for (int64_t i = 0; i < n; i++)
		s += exp((double)x[i] - m);
	return m + log(s);
}

int fw_rt_sample(const float *logits, int V, double temp, int top_k, double top_p,
		 uint64_t key, uint64_t counter, struct fw_rt_cand *c)
{
	int best = (int)fw_rt_argmax(logits, V);
	if (temp <= 0)
		return best;
	for (int i = 0; i < V; i++)
		c[i] = (struct fw_rt_cand){ (float)((logits[i] - logits[best]) / temp), i };
	qsort(c, (size_t)V, sizeof(*c), by_prob);
	int n = top_k > 0 && top_k < V ? top_k : V;
	double sum = 0;
	for (int i = 0; i < n; i++)
		sum += c[i].p = expf(c[i].p);
	double acc = 0;
	for (int i = 0; i < n; i++) {           /* nucleus: smallest prefix >= top_p */
		acc += c[i].p / sum;
		if (acc >= top_p) {
			n = i + 1;
			break;
		}
	}
	double total = 0;
	for (int i = 0; i < n; i++)
		total += c[i].p;
	double r = fw_rng_uniform(key, counter) * total;
	for (int i = 0; i < n; i++) {
		r -= c[i].p;
		if (r <= 0)
			return c[i].id;
	}
	return c[n - 1].id;
}

void fw_rt_repetition_penalty(const float *logits, const uint8_t *seen, int n, double penalty,
			      float *out)
{
	for (int i = 0; i < n; i++)
		out[i] = !seen[i] ? logits[i] : logits[i] > 0 ? (float)(logits[i] / penalty) :
			 (float)(logits[i] * penalty);
}
