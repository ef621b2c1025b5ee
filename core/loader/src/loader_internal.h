/* loader_internal.h - private to the plugin loader (plugin.c, host.c). */
#ifndef FW_LOADER_INTERNAL_H
#define FW_LOADER_INTERNAL_H

#include "fw/fw.h"

/* Opens/closes the window in which plugins may register ops (host.c). */
void fw_host_registration(bool open);

#endif
