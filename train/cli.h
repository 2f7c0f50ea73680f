/* Small helpers shared by the mxtrain subcommands' option parsing. */
#ifndef MX_TRAIN_CLI_H
#define MX_TRAIN_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/keys.h"

#define CLI_EXIT_USAGE 2

/* If argv[*i] is `name VALUE` or `name=VALUE`, stores VALUE, advances *i and
 * returns 1; returns 0 if argv[*i] is another option; -1 (after printing an
 * error) if the value is missing. */
int cli_take_value(int argc, char **argv, int *i, const char *name, const char **value);
/* cli_take_value for each of n options (names[k] into *dst[k]): the first that matches. */
int cli_take_values(int argc, char **argv, int *i, const char *const *names, const char **const *dst, int n);
/* Strict integer parsing: the whole string must be a number in [lo, hi]. */
bool cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out);
/* Prints "mxtrain CMD: MESSAGE" on stderr plus a hint, returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool cli_is_help(const char *arg);

/* Where a command computes. */
typedef enum cli_device { CLI_DEVICE_CPU, CLI_DEVICE_CUDA, CLI_DEVICE_COUNT } cli_device;
extern const mx_enum cli_device_enum;
/* Parses --device's value: 0; -1 for an unknown name (usage error); -2 when the
 * device cannot be used here (built without CUDA, no GPU visible): err says why. */
int cli_device_open(const char *name, cli_device *out, mx_err *err);

#endif
