/* The mxtrain subcommands. Each takes argv after the command name and
 * returns the process exit status (0 ok, 1 failure, 2 usage error). */
#ifndef MX_TRAIN_COMMANDS_H
#define MX_TRAIN_COMMANDS_H

int cmd_version(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_bench(int argc, char **argv);

#endif
