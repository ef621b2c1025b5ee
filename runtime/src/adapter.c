/* adapter.c - adapters through the peft plugin's hooks (fw/runtime/adapter.h). */
#include "fw/runtime/adapter.h"
#include "fw/runtime/model.h"

enum fw_status fw_rt_adapter_save(const struct fw_plugin_slots *plugins, struct fw_model *m,
				  const char *path, bool *saved, struct fw_err *err)
{
	if (saved)
		*saved = false;
	if (!plugins->peft)
		return FW_OK;
	const struct fw_peft_i *pi = plugins->peft->desc->iface;
	if (!pi->save)
		return FW_OK;
	struct fw_err e = { 0 };
	if (pi->save(plugins->peft->state, m, path, &e) != FW_OK) {
		if (e.status == FW_ERR_UNSUPPORTED)
			return FW_OK;            /* a plugin without adapter files */
		return fw_errorf(err, e.status ? e.status : FW_ERR_INTERNAL, "%s", e.msg);
	}
	if (saved)
		*saved = true;
	return FW_OK;
}

enum fw_status fw_rt_adapter_load(const struct fw_plugin_slots *plugins, struct fw_model *m,
				  const char *path, bool merge, struct fw_err *err)
{
	if (!plugins->peft)
		return fw_errorf(err, FW_ERR_INVALID, "%s: loading an adapter needs a peft plugin",
				 path);
	const struct fw_peft_i *pi = plugins->peft->desc->iface;
	if (!pi->load || (merge && !pi->merge))
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s cannot %s adapters",
				 plugins->peft->desc->name, pi->load ? "merge" : "load");
	struct fw_err e = { 0 };
	enum fw_status st = pi->load(plugins->peft->state, m, path, &e);
	if (st == FW_OK && merge)
		st = pi->merge(plugins->peft->state, m, &e);
	fw_rt_mark_params_written(m->ctx, 0);
	if (st != FW_OK)
		return fw_errorf(err, e.status ? e.status : FW_ERR_INTERNAL, "%s", e.msg);
	return FW_OK;
}

enum fw_status fw_rt_adapter_init(const struct fw_plugin_slots *plugins, struct fw_model *m,
				  struct fw_err *err)
{
	const struct fw_peft_i *pi = plugins->peft ? plugins->peft->desc->iface : NULL;
	struct fw_err e = { 0 };
	if (pi && pi->init_from_base && pi->init_from_base(plugins->peft->state, m, &e) != FW_OK)
		return fw_errorf(err, e.status ? e.status : FW_ERR_INTERNAL, "%s", e.msg);
	return FW_OK;
}
