// SPDX-License-Identifier: GPL-2.0
/*
 * kmm_ci_fw: a tiny test fixture for KMM CI. Requests the firmware file kmm_ci_fw.bin
 * at load time (it fails to load without it), and declares it with MODULE_FIRMWARE so
 * `modinfo -F firmware` lists it.
 */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/firmware.h>
#include <linux/device.h>
#include <linux/platform_device.h>
#include <linux/err.h>

#define KMM_CI_FW_NAME "kmm_ci_fw.bin"

static struct platform_device *kmm_ci_fw_pdev;

static int __init kmm_ci_fw_init(void)
{
	const struct firmware *fw;
	int ret;

	kmm_ci_fw_pdev = platform_device_register_simple("kmm_ci_fw", -1, NULL, 0);
	if (IS_ERR(kmm_ci_fw_pdev))
		return PTR_ERR(kmm_ci_fw_pdev);

	ret = request_firmware(&fw, KMM_CI_FW_NAME, &kmm_ci_fw_pdev->dev);
	if (ret) {
		pr_err("kmm_ci_fw: request_firmware(%s) failed: %d\n", KMM_CI_FW_NAME, ret);
		platform_device_unregister(kmm_ci_fw_pdev);
		return ret;
	}
	pr_info("kmm_ci_fw: loaded %s (%zu bytes)\n", KMM_CI_FW_NAME, fw->size);
	release_firmware(fw);
	return 0;
}

static void __exit kmm_ci_fw_exit(void)
{
	platform_device_unregister(kmm_ci_fw_pdev);
	pr_info("kmm_ci_fw: unloaded\n");
}

module_init(kmm_ci_fw_init);
module_exit(kmm_ci_fw_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmm-rs CI");
MODULE_DESCRIPTION("KMM CI fixture: requests firmware " KMM_CI_FW_NAME);
MODULE_VERSION("1.0");
MODULE_FIRMWARE(KMM_CI_FW_NAME);
