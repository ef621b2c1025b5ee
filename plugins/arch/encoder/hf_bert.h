/* hf_bert.h - arch/encoder's Hugging Face maps (hf_bert.c), one a class. */
#ifndef FW_ENCODER_HF_BERT_H
#define FW_ENCODER_HF_BERT_H

#include "fw/plugin.h"

extern const struct fw_hf_map encoder_hf_bert_mlm, encoder_hf_bert_seq, encoder_hf_bert_tok,
	encoder_hf_bert_base, encoder_hf_roberta_mlm, encoder_hf_roberta_seq;

#endif
