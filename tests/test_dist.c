/* dist/ and train/ddp.c: data-parallel ranks under `mpirun -np 2
 * --oversubscribe` on this machine (loopback only). Skipped where mpirun is
 * missing, and in sanitizer builds (Open MPI's own allocations defeat
 * LeakSanitizer). */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "test_util.h"

static const char *mx(void) {
    static char p[600];
    snprintf(p, sizeof p, "%s/mxtrain", getenv("MX_BUILD_DIR") ? getenv("MX_BUILD_DIR") : "..");
    return p;
}

/* mpirun's options here: two ranks on any core count, as root too, shared memory only */
#define MPIRUN "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader " \
               "OMPI_MCA_plm_rsh_agent= mpirun --oversubscribe --bind-to none"

static int sh(const char *cmd) {
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const char *const ARCH[2] = {
    "--set model.arch=resnet --set model.blocks=1,1,1,1 --set model.widths=8,8,16,16 --set train.sync_bn=true",
    "--set model.arch=vit --set model.patch_size=4 --set model.dim=32 --set model.depth=2 --set model.heads=2"};

/* The common settings of every run: tiny synthetic data, no augmentation. */
static void base(char *out, size_t n, int arch, const char *fmt, int batch, int steps, const char *dir) {
    snprintf(out, n,
             "train %s/configs/quickstart.ini %s --set model.img_size=16 --set quant.format=%s "
             "--set data.dataset=synthetic --set data.synthetic_train=64 --set data.synthetic_eval=24 "
             "--set data.augment=false --set data.batch_size=%d --set train.epochs=10 --set train.max_steps=%d --set optim.lr=0.01 "
             "--set log.progress=false --set log.print_every=1 --set log.dir=%s",
             getenv("MX_SOURCE_DIR"), ARCH[arch], fmt, batch, steps, dir);
}

/* The step losses (n of them) and the last eval loss of a run's metrics.jsonl. */
static int read_losses(const char *dir, double *loss, int n, double *eval) {
    char p[700], line[600];
    snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
    FILE *f = fopen(p, "r");
    if (!f) return -1;
    int k = 0;
    while (fgets(line, sizeof line, f)) {
        const char *e = strstr(line, "\"eval_loss\":"), *l = strstr(line, "\"loss\":");
        if (e) *eval = atof(e + 12);
        else if (l && k < n) loss[k++] = atof(l + 7);
    }
    fclose(f);
    return k;
}

static bool have_mpirun(void) { return sh("command -v mpirun > /dev/null 2>&1") == 0; }

#define SKIP_UNLESS_MPI()                                                                   \
    do {                                                                                    \
        if (getenv("MX_SANITIZED") || !have_mpirun()) {                                     \
            fprintf(stderr, "SKIP %s: %s\n", __func__,                                      \
                    getenv("MX_SANITIZED") ? "sanitizer build" : "mpirun not found");        \
            return;                                                                         \
        }                                                                                   \
    } while (0)

/* 2 ranks x batch 8 equal 1 rank x batch 16 up to FP32 summation order: ResNet
 * (sync_bn) and ViT, fp32 and mxsf 2d, 4 steps and the evaluation after. */
START_TEST(test_two_ranks_equal_one_with_twice_the_batch) {
    SKIP_UNLESS_MPI();
    const char *fmts[2] = {"fp32", "mxsf"};
    for (int a = 0; a < 2; a++)
        for (int f = 0; f < 2; f++) {
            char d1[600], d2[600], args[3000], cmd[4000];
            snprintf(d1, sizeof d1, "%s/one_%d_%d", test_tmpdir(), a, f);
            snprintf(d2, sizeof d2, "%s/two_%d_%d", test_tmpdir(), a, f);
            base(args, sizeof args, a, fmts[f], 16, 4, d1);
            snprintf(cmd, sizeof cmd, "%s %s > %s.out 2>&1", mx(), args, d1);
            ck_assert_int_eq(sh(cmd), 0);
            base(args, sizeof args, a, fmts[f], 8, 4, d2);
            snprintf(cmd, sizeof cmd, MPIRUN " -np 2 %s %s > %s.out 2>&1", mx(), args, d2);
            ck_assert_msg(sh(cmd) == 0, "mpirun failed: see %s.out", d2);
            double l1[4], l2[4], e1 = NAN, e2 = NAN;
            ck_assert_int_eq(read_losses(d1, l1, 4, &e1), 4);
            ck_assert_int_eq(read_losses(d2, l2, 4, &e2), 4);
            for (int i = 0; i < 4; i++)
                ck_assert_msg(fabs(l1[i] - l2[i]) <= 1e-5 * fabs(l1[i]), "%s %s step %d: %.9g vs %.9g", a ? "vit" : "resnet",
                              fmts[f], i + 1, l1[i], l2[i]);
            ck_assert_msg(fabs(e1 - e2) <= 1e-5 * fabs(e1), "eval loss %.9g vs %.9g", e1, e2);
            if (a == 0 && f == 0) { /* rank 0 alone writes and prints */
                char text[8192] = {0}, p[700];
                snprintf(p, sizeof p, "%s.out", d2);
                FILE *o = fopen(p, "r");
                size_t n = o ? fread(text, 1, sizeof text - 1, o) : 0;
                text[n] = 0;
                if (o) fclose(o);
                const char *first = strstr(text, "done: 4 steps");
                ck_assert_msg(first && !strstr(first + 1, "done: 4 steps"), "one 'done' line expected:\n%s", text);
                ck_assert_msg(strstr(text, "2 ranks x batch 8 = global batch 16"), "%s", text);
                snprintf(cmd, sizeof cmd, "test $(grep -c '\"step\":' %s/metrics.jsonl) -eq 5 && test -f %s/ckpt/last.h5",
                         d2, d2);
                ck_assert_msg(sh(cmd) == 0, "metrics.jsonl should hold 4 steps and one evaluation, written once");
            }
        }
}
END_TEST

/* A run of 2 ranks resumes on 1 rank, and the other way round. */
START_TEST(test_resume_with_another_rank_count) {
    SKIP_UNLESS_MPI();
    for (int way = 0; way < 2; way++) {
        char d[600], args[3000], cmd[4000];
        snprintf(d, sizeof d, "%s/resume_%d", test_tmpdir(), way);
        base(args, sizeof args, 0, "mxsf", 8, 2, d);
        snprintf(cmd, sizeof cmd, "%s%s %s > %s.a 2>&1", way == 0 ? MPIRUN " -np 2 " : "", mx(), args, d);
        ck_assert_int_eq(sh(cmd), 0);
        base(args, sizeof args, 0, "mxsf", 8, 5, d);
        snprintf(cmd, sizeof cmd, "%s%s %s --resume %s > %s.b 2>&1", way == 1 ? MPIRUN " -np 2 " : "", mx(), args, d, d);
        ck_assert_msg(sh(cmd) == 0, "resume failed: see %s.b", d);
        double l[8], e = NAN;
        ck_assert_int_eq(read_losses(d, l, 8, &e), 5);
        ck_assert(isfinite(e));
    }
}
END_TEST

/* A config that differs between the ranks ends every rank with one clear line. */
START_TEST(test_mismatched_config_stops_every_rank) {
    SKIP_UNLESS_MPI();
    char d[600], a0[3000], a1[3000], cmd[8000];
    snprintf(d, sizeof d, "%s/mismatch", test_tmpdir());
    base(a0, sizeof a0, 0, "fp32", 8, 2, d);
    base(a1, sizeof a1, 0, "mxsf", 8, 2, d);
    snprintf(cmd, sizeof cmd, MPIRUN " -np 1 %s %s : -np 1 %s %s > %s.out 2>&1", mx(), a0, mx(), a1, d);
    ck_assert_int_ne(sh(cmd), 0);
    snprintf(cmd, sizeof cmd, "grep -q 'differs between rank 0 and rank 1' %s.out && ! test -e %s/metrics.jsonl", d, d);
    ck_assert_msg(sh(cmd) == 0, "expected the mismatch message and no run files (see %s.out)", d);
}
END_TEST

/* A rank that stops answering (SIGSTOP) ends the job after train.dist_timeout_s, saying so. */
START_TEST(test_hung_rank_times_out) {
    SKIP_UNLESS_MPI();
    char d[600], args[3000], cmd[8000];
    snprintf(d, sizeof d, "%s/hang", test_tmpdir());
    base(args, sizeof args, 0, "fp32", 8, 100000, d);
    snprintf(cmd, sizeof cmd,
             "(" MPIRUN " -np 2 %s %s --set train.epochs=100000 --set train.dist_timeout_s=3 > %s.out 2>&1; echo $? > %s.rc) & "
             "for k in $(seq 200); do [ -s %s/metrics.jsonl ] && break; sleep 0.1; done; "
             "for p in $(pgrep -f 'log.dir=%s'); do grep -qz '^OMPI_COMM_WORLD_RANK=1$' /proc/$p/environ 2>/dev/null && kill -STOP $p; done; "
             "for k in $(seq 300); do [ -s %s.rc ] && break; sleep 0.1; done; for p in $(pgrep -f 'log.dir=%s'); do grep -qz '^OMPI_COMM_WORLD_RANK=' /proc/$p/environ 2>/dev/null && kill -9 $p; done; "
             "test -s %s.rc && ! grep -qx 0 %s.rc && grep -q 'waited 3 s for the other ranks' %s.out",
             mx(), args, d, d, d, d, d, d, d, d, d);
    ck_assert_msg(sh(cmd) == 0, "expected a timeout message and a failed job (see %s.out)", d);
}
END_TEST

int main(void) {
    Suite *s = suite_create("dist");
    TCase *tc = tcase_create("mpirun");
    tcase_add_test(tc, test_two_ranks_equal_one_with_twice_the_batch);
    tcase_add_test(tc, test_resume_with_another_rank_count);
    tcase_add_test(tc, test_mismatched_config_stops_every_rank);
    tcase_add_test(tc, test_hung_rank_times_out);
    tcase_set_timeout(tc, 300);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
