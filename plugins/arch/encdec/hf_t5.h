/* hf_t5.h - arch/encdec's Hugging Face map (hf_t5.c). */
#ifndef FW_ENCDEC_HF_T5_H
#define FW_ENCDEC_HF_T5_H

#include "fw/plugin.h"

extern const struct fw_hf_map encdec_hf_t5;

#endif
