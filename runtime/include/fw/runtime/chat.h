/* fw/runtime/chat.h - chat prompts for generation, in the format a model was
 * trained on, and the tokens that end its answer.
 *
 *   struct fw_rt_chat c;
 *   fw_rt_chat_open(&c, tok, "auto", &err);          // auto, plain or chatml
 *   fw_rt_chat_prompt(&c, "[{\"role\": \"user\", \"content\": \"Hi\"}]", &ids, &err);
 *   ... generate from ids, stop at any of c.stop[0..n_stop) ...
 *   fw_rt_chat_close(&c);
 *
 * auto renders the tokenizer's tokenizer_config.json chat_template (as
 * --chat-template=auto does for SFT data) with add_generation_prompt and its
 * bos/eos token variables, and tokenizes the text with special tokens
 * recognized and none added (Hugging Face's apply_chat_template); with no
 * template it is plain. plain and chatml build the prompt as the SFT
 * records of data.h are built, piece by piece, ending with the assistant's
 * header ("\n\nAssistant:\n", "<|im_start|>assistant\n").
 *
 * The stop set: the tokenizer's EOS, the config's eos_token, and the
 * template's end of turn: the special token the template puts right after an
 * assistant's content (after whitespace), found by rendering a probe
 * conversation. For Llama-3 that is <|end_of_text|> and <|eot_id|>; Qwen3
 * <|endoftext|> and <|im_end|>; Gemma3 <eos> and <end_of_turn>: the
 * eos_token_id lists of their generation_config.json. chatml adds
 * <|im_end|>.
 */
#ifndef FW_RUNTIME_CHAT_H
#define FW_RUNTIME_CHAT_H

#include <stdbool.h>
#include <stdint.h>

#include "fw/status.h"
#include "fw/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

struct fw_chat_template;

#define FW_RT_CHAT_MAX_STOP 8

struct fw_rt_chat {
	struct fw_tokenizer *tok;         /* not owned */
	struct fw_chat_template *jinja;   /* auto with a template, else NULL */
	void *vars;                       /* its variables (a json_t object) */
	bool chatml;
	int32_t im_start, im_end;
	int32_t stop[FW_RT_CHAT_MAX_STOP];
	int n_stop;
};

/* format: "auto", "plain" or "chatml" (chatml adds its two special tokens
 * to tok when it lacks them). A template fw cannot parse, or damaged
 * tokenizer_config.json: one line. */
enum fw_status fw_rt_chat_open(struct fw_rt_chat *c, struct fw_tokenizer *tok,
			       const char *format, struct fw_err *err);
/* Appends the prompt ids of a conversation to ids: messages_json is a JSON
 * array of {"role", "content"} messages (for the template, any members it
 * reads). Bad JSON or messages, or the template raising: one line. */
enum fw_status fw_rt_chat_prompt(const struct fw_rt_chat *c, const char *messages_json,
				 struct fw_token_buf *ids, struct fw_err *err);
bool fw_rt_chat_is_stop(const struct fw_rt_chat *c, int32_t id);
void fw_rt_chat_close(struct fw_rt_chat *c);

#ifdef __cplusplus
}
#endif
#endif
