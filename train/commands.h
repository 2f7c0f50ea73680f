/* The mxtrain subcommands. Each takes argv after the command name and
 * returns the process exit status (0 ok, 1 failure, 2 usage error). */
#ifndef MX_TRAIN_COMMANDS_H
#define MX_TRAIN_COMMANDS_H

#define MXTRAIN_VERSION "0.1.0"

int cmd_version(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_qsnr(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_probe(int argc, char **argv);

/* Shared by train/eval/compare (cmd_train.c): loads CONFIG and applies --set
 * options; other options go to `extra` (returns 1 taken, 0 not, -1 error).
 * Returns 0, or the exit status to return. */
struct config;
int cmd_parse_config(const char *cmd, int argc, char **argv, struct config *c,
                     int (*extra)(int argc, char **argv, int *i, void *user), void *user);

#endif
