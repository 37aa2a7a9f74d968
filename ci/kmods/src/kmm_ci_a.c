// SPDX-License-Identifier: GPL-2.0
/*
 * kmm_ci_a: a tiny test fixture for KMM CI. Calls kmm_ci_b_answer(), exported by kmm_ci_b,
 * so modprobe kmm_ci_a loads kmm_ci_b first.
 */
#include <linux/init.h>
#include <linux/module.h>

extern int kmm_ci_b_answer(int x);

static int offset = 0;
module_param(offset, int, 0444);
MODULE_PARM_DESC(offset, "added to the answer (for parameter tests)");

static int __init kmm_ci_a_init(void)
{
	pr_info("kmm_ci_a: loaded, answer=%d\n", kmm_ci_b_answer(offset));
	return 0;
}

static void __exit kmm_ci_a_exit(void)
{
	pr_info("kmm_ci_a: unloaded\n");
}

module_init(kmm_ci_a_init);
module_exit(kmm_ci_a_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmm-rs CI");
MODULE_DESCRIPTION("KMM CI fixture: depends on kmm_ci_b");
MODULE_VERSION("1.0");
