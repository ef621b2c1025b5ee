/* t5_bucket.h - T5's relative position buckets, as Hugging Face's
 * T5Attention._relative_position_bucket computes them in float32.
 *
 * rel = key position - query position. Bidirectional (the encoder): half
 * the buckets for keys after the query, half for the others; causal (the
 * decoder): keys after the query share bucket 0. Distances below
 * max_exact = buckets / 2 (of the half) have a bucket each, larger ones
 * share logarithmic buckets up to max_distance, and farther ones the last.
 */
#ifndef FW_T5_BUCKET_H
#define FW_T5_BUCKET_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

static inline int t5_relative_bucket(int64_t rel, bool bidirectional, int num_buckets,
				     int max_distance)
{
	int bucket = 0;
	if (bidirectional) {
		num_buckets /= 2;
		if (rel > 0)
			bucket = num_buckets;
		rel = rel < 0 ? -rel : rel;
	} else {
		rel = rel < 0 ? -rel : 0;
	}
	int max_exact = num_buckets / 2;
	if (rel < max_exact)
		return bucket + (int)rel;
	/* float32 throughout, as torch's float tensor ops; the cast truncates */
	float ratio = (float)rel / (float)max_exact;
	float span = (float)log((double)max_distance / (double)max_exact);
	float f = logf(ratio) / span * (float)(num_buckets - max_exact);
	int64_t large = max_exact + (int64_t)f;
	if (large > num_buckets - 1)
		large = num_buckets - 1;
	return bucket + (int)large;
}

#endif
