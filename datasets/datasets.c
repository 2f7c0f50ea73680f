/* Placeholder translation unit: the datasets module's sources arrive with its issue
 * (see README.md for what the module will hold). */
#include "core/error.h"

const char *datasets_module_name(void);
const char *datasets_module_name(void) { return "datasets"; }
