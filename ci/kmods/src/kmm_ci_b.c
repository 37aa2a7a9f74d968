// SPDX-License-Identifier: GPL-2.0
/*
 * kmm_ci_b: a tiny test fixture for KMM CI. Exports one symbol that kmm_ci_a uses,
 * so depmod records "kmm_ci_a depends on kmm_ci_b".
 */
#include <linux/init.h>
#include <linux/module.h>

static int kmm_ci_b_calls;

int kmm_ci_b_answer(int x)
{
	kmm_ci_b_calls++;
	return x + 42;
}
EXPORT_SYMBOL(kmm_ci_b_answer);

static int __init kmm_ci_b_init(void)
{
	pr_info("kmm_ci_b: loaded\n");
	return 0;
}

static void __exit kmm_ci_b_exit(void)
{
	pr_info("kmm_ci_b: unloaded after %d calls\n", kmm_ci_b_calls);
}

module_init(kmm_ci_b_init);
module_exit(kmm_ci_b_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmm-rs CI");
MODULE_DESCRIPTION("KMM CI fixture: exports kmm_ci_b_answer");
MODULE_VERSION("1.0");
