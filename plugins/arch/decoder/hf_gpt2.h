/* hf_gpt2.h - arch/decoder's Hugging Face map (hf_gpt2.c). */
#ifndef FW_DECODER_HF_GPT2_H
#define FW_DECODER_HF_GPT2_H

#include "fw/plugin.h"

extern const struct fw_hf_map decoder_hf_gpt2;

#endif
