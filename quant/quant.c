/* Placeholder translation unit until the quant/ issue. */
const char *quant_module_name(void);
const char *quant_module_name(void) { return "quant"; }
