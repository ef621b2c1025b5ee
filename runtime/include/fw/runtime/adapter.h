/* fw/runtime/adapter.h - a PEFT adapter's life cycle through the peft
 * plugin's hooks (save, load, merge), knowing nothing of any one method.
 *
 * The file format is the plugin's own (peft/lora's is documented in its
 * folder); the runtime only names the file and reports.
 */
#ifndef FW_RUNTIME_ADAPTER_H
#define FW_RUNTIME_ADAPTER_H

#include "fw/loader.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Writes the adapter-only file at path with the peft plugin's save hook.
 * *saved (may be NULL) is false, with FW_OK, when there is nothing to save:
 * no peft plugin, or one that keeps no adapter files (no save hook, or its
 * hook answers FW_ERR_UNSUPPORTED). */
enum fw_status fw_rt_adapter_save(const struct fw_plugin_slots *plugins, struct fw_model *m,
				  const char *path, bool *saved, struct fw_err *err);

/* Loads path into the built model m with the peft plugin's load hook, then,
 * with merge, folds it into the base weights (merge hook).
 * FW_ERR_INVALID: no peft plugin; FW_ERR_UNSUPPORTED: the plugin cannot
 * load (or merge); otherwise the plugin's error. */
enum fw_status fw_rt_adapter_load(const struct fw_plugin_slots *plugins, struct fw_model *m,
				  const char *path, bool merge, struct fw_err *err);

/* A new adapter's initialisation from the base weights (the peft plugin's
 * init_from_base: prompt tuning's text and sample_vocab init), once they are
 * in place; nothing without a peft plugin or hook. Not for an adapter
 * loaded from a file or checkpoint. */
enum fw_status fw_rt_adapter_init(const struct fw_plugin_slots *plugins, struct fw_model *m,
				  struct fw_err *err);

#ifdef __cplusplus
}
#endif
#endif
