/* Placeholder translation unit: the optim module's sources arrive with its issue
 * (see README.md for what the module will hold). */
#include "core/error.h"

const char *optim_module_name(void);
const char *optim_module_name(void) { return "optim"; }
