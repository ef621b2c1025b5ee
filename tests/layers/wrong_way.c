/* Must NOT compile: built once with each of libfw's layers' own include
 * directories (layers_compile_engine, _formats, _loader), it includes
 * WRONG_WAY_HEADER, a public header of the layer above that one (fw/io.h,
 * fw/plugin.h, fw/runtime.h). Each test passes when the compiler cannot find
 * it; tests/layers/downward_ok.c is the same set-up that must compile. */
#include "fw/tensor.h"
#include WRONG_WAY_HEADER

int layer_probe_wrong_way(void);
int layer_probe_wrong_way(void)
{
	return 0;
}
