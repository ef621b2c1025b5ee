/* Must compile, once with each layer's include directories (the control of
 * the layers_compile_* probes: what they refuse is the one wrong-way header,
 * not the probe set-up). LAYER_HEADER is the layer's own public header; each
 * layer sees the engine's. */
#include "fw/tensor.h"
#include LAYER_HEADER

int layer_probe_ok(void);
int layer_probe_ok(void)
{
	return 0;
}
