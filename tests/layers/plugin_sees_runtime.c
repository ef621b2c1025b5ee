/* Must NOT compile: built with a plugin's include directories (libfw only),
 * it includes the runtime, a layer above plugins. ctest's layers_compile
 * passes when the compiler cannot find fw/runtime.h. */
#include "fw/plugin.h"
#include "fw/runtime.h"

int layer_probe(void);
int layer_probe(void)
{
	return 0;
}
