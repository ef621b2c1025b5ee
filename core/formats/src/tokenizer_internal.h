/* tokenizer_internal.h - knobs of tokenizer.c for its tests (not public API). */
#ifndef FW_TOKENIZER_INTERNAL_H
#define FW_TOKENIZER_INTERNAL_H

#include "fw/tokenizer.h"

/* Pieces longer than n bytes merge with the heap algorithm instead of the
 * array one (default 128; 0 sends every piece of two or more bytes to the
 * heap). Both must give the same tokens. */
void fw_tokenizer_set_heap_threshold(struct fw_tokenizer *t, size_t n);
/* Whether PCRE2 JIT-compiled the pattern. */
bool fw_tokenizer_uses_jit(const struct fw_tokenizer *t);

#endif
