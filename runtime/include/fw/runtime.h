/* fw/runtime.h - the runtime layer: the reusable host side of fw.
 *
 * Layers, each using only the ones below it (docs/architecture.md):
 *   engine (tensors, graph, kernels)  <- formats/IO (HDF5, safetensors,
 *   tokenizer)  <- plugin loader  <- runtime (this)  <- tools (fwrun).
 * Plugins see the engine and fw/plugin.h only, never the runtime.
 *
 * Runtime functions take structs, return enum fw_status with a one-line
 * struct fw_err, and never exit or print: what they have to say goes to the
 * caller's log callback.
 */
#ifndef FW_RUNTIME_H
#define FW_RUNTIME_H

#include "fw/fw.h"
#include "fw/runtime/log.h"
#include "fw/runtime/file.h"
#include "fw/runtime/ini.h"
#include "fw/runtime/schedule.h"
#include "fw/runtime/model.h"
#include "fw/runtime/optim.h"
#include "fw/runtime/adapter.h"
#include "fw/runtime/checkpoint.h"
#include "fw/runtime/data.h"
#include "fw/runtime/trainer.h"
#include "fw/runtime/sample.h"
#include "fw/runtime/generate.h"
#include "fw/runtime/chat.h"
#include "fw/runtime/score.h"
#include "fw/runtime/sweep.h"
#include "fw/runtime/tasks.h"
#include "fw/runtime/genconfig.h"
#include "fw/runtime/seq2seq.h"
#include "fw/runtime/squad.h"

#endif
