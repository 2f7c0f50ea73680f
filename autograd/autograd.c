/* Placeholder translation unit: the autograd module's sources arrive with its issue
 * (see README.md for what the module will hold). */
#include "core/error.h"

const char *autograd_module_name(void);
const char *autograd_module_name(void) { return "autograd"; }
