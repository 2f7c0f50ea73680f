/* Placeholder translation unit: the layers module's sources arrive with its issue
 * (see README.md for what the module will hold). */
#include "core/error.h"

const char *layers_module_name(void);
const char *layers_module_name(void) { return "layers"; }
