/* hf.h - arch/decoder's Hugging Face maps (hf_gpt2.c, hf_llama.c) and the
 * config.json helpers they share (hf_gpt2.c). */
#ifndef FW_DECODER_HF_H
#define FW_DECODER_HF_H

#include <jansson.h>

#include "fw/plugin.h"

extern const struct fw_hf_map decoder_hf_gpt2;
extern const struct fw_hf_map decoder_hf_llama, decoder_hf_mistral, decoder_hf_qwen2;

/* config.json at path parsed into *root, a JSON object; else one line
 * naming the file (and the key of a value jansson cannot read). */
enum fw_status decoder_hf_load(const char *path, json_t **root, struct fw_err *err);
/* A size key: present and an integer. */
enum fw_status decoder_hf_int(const char *path, const json_t *root, const char *key,
			      int64_t *out, struct fw_err *err);
/* A JSON value as it is written, for messages (cut at len). */
void decoder_hf_json_text(const json_t *v, char *out, size_t len);
/* The whole file (malloc'd, NUL-terminated), NULL when unreadable. */
char *decoder_hf_read_text(const char *path, size_t *n);

#endif
