/* fw/fw.h - everything a user of the fw core needs. */
#ifndef FW_FW_H
#define FW_FW_H

#include "fw/status.h"
#include "fw/tensor.h"
#include "fw/ops.h"
#include "fw/op.h"
#include "fw/graph.h"
#include "fw/io.h"
#include "fw/plugin.h"
#include "fw/loader.h"
#include "fw/safetensors.h"
#include "fw/tokenizer.h"
#include "fw/machine.h"

#define FW_VERSION_MAJOR 0
#define FW_VERSION_MINOR 1
#define FW_VERSION_PATCH 0

#endif
