// SPDX-License-Identifier: GPL-2.0-only
/*
 * devmodels_testdev: a Linux driver for the devmodels PCI test device (1234:de70).
 *
 * The register map is devmodels/testdev/regs.py (BAR0, 4 KiB). The driver exists to show
 * that interrupts reach a real guest and to count them:
 *
 * - mode=intx|msi|msix (module parameter) chooses the kind of vector it allocates with
 *   pci_alloc_irq_vectors(): INTx (a shared, level-triggered line), one MSI vector, or
 *   both MSI-X vectors (the device's table has two).
 * - The handler reads IRQ_STATUS; zero means the interrupt was not ours (a shared INTx
 *   line, or a late call on a line already quiet) and it returns IRQ_NONE. Otherwise it
 *   writes the bits it saw to IRQ_ACK (which clears them and lowers INTx) and counts an
 *   IRQ_HANDLED on its vector.
 * - sysfs, in the PCI device's directory under testdev/:
 *     raise   write N (1..RAISE_MAX): raise N interrupts one at a time through IRQ_RAISE,
 *             each waited for (RAISE_TIMEOUT_MS); the write fails with ETIMEDOUT at the
 *             first one not handled in time.
 *     dma     write LEN (1..DMA_BUF_MAX): one DMA copy between two coherent buffers,
 *             waited for through its IRQ_DMA_DONE interrupt, then checked byte by byte;
 *             the write fails with EIO if the copy or its status is wrong.
 *     counts  one line of key=value words: mode, vectors, raised, handled, unhandled,
 *             handled per vector (vec0=..), dma_irqs, dma_ok, timeouts, and the Linux IRQ
 *             numbers (irq0=..) to find in /proc/interrupts.
 */

#include <linux/atomic.h>
#include <linux/completion.h>
#include <linux/dma-mapping.h>
#include <linux/interrupt.h>
#include <linux/io-64-nonatomic-lo-hi.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/sysfs.h>

#define DRV_NAME "devmodels_testdev"

#define TESTDEV_VENDOR_ID 0x1234
#define TESTDEV_DEVICE_ID 0xde70
#define TESTDEV_MAGIC 0x7e57de70

/* BAR0 registers (devmodels/testdev/regs.py). */
#define REG_ID 0x00
#define REG_IRQ_STATUS 0x08
#define REG_IRQ_RAISE 0x0c
#define REG_IRQ_ACK 0x10
#define REG_DMA_SRC 0x20
#define REG_DMA_DST 0x28
#define REG_DMA_LEN 0x30
#define REG_DMA_CMD 0x34
#define REG_DMA_STATUS 0x38

#define DMA_CMD_START 0x1
#define DMA_STATUS_DONE 1
#define IRQ_DMA_DONE 0x1
#define IRQ_DMA_ERROR 0x2
#define IRQ_TEST_BIT 0x100 /* a status bit of our own for raised interrupts */

#define MAX_VECTORS 2
#define RAISE_MAX 10000
#define RAISE_TIMEOUT_MS 5000
#define DMA_BUF_MAX 4096

enum testdev_mode { MODE_INTX, MODE_MSI, MODE_MSIX };

static const char *const mode_names[] = { "intx", "msi", "msix" };

static char *mode = "intx";
module_param(mode, charp, 0444);
MODULE_PARM_DESC(mode, "interrupt kind: intx, msi or msix");

static enum testdev_mode chosen_mode;

struct testdev;

struct testdev_vector {
	struct testdev *td;
	int irq;
	atomic_t handled;
	char name[32];
};

struct testdev {
	struct pci_dev *pdev;
	void __iomem *bar0;
	int nvec;
	struct testdev_vector vec[MAX_VECTORS];
	struct mutex busy; /* one raise or DMA request at a time */
	spinlock_t seen_lock;
	u32 seen; /* status bits the handlers acknowledged since the last request */
	struct completion event;
	atomic_t unhandled;
	atomic_t dma_irqs;
	unsigned int raised;
	unsigned int timeouts;
	unsigned int dma_ok;
};

static irqreturn_t testdev_irq(int irq, void *data)
{
	struct testdev_vector *v = data;
	struct testdev *td = v->td;
	u32 status = ioread32(td->bar0 + REG_IRQ_STATUS);

	if (!status || status == 0xffffffff) {
		atomic_inc(&td->unhandled);
		return IRQ_NONE;
	}
	iowrite32(status, td->bar0 + REG_IRQ_ACK);
	atomic_inc(&v->handled);
	if (status & (IRQ_DMA_DONE | IRQ_DMA_ERROR))
		atomic_inc(&td->dma_irqs);
	spin_lock(&td->seen_lock);
	td->seen |= status;
	spin_unlock(&td->seen_lock);
	complete(&td->event);
	return IRQ_HANDLED;
}

static void testdev_arm(struct testdev *td)
{
	spin_lock_irq(&td->seen_lock);
	td->seen = 0;
	spin_unlock_irq(&td->seen_lock);
	reinit_completion(&td->event);
}

/* Wait until a handler has acknowledged one of @bits; false on timeout. */
static bool testdev_wait(struct testdev *td, u32 bits)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(RAISE_TIMEOUT_MS);
	u32 seen;

	for (;;) {
		long left = (long)(deadline - jiffies);

		if (left <= 0 || !wait_for_completion_timeout(&td->event, left))
			return false;
		spin_lock_irq(&td->seen_lock);
		seen = td->seen;
		spin_unlock_irq(&td->seen_lock);
		if (seen & bits)
			return true;
	}
}

static ssize_t raise_store(struct device *dev, struct device_attribute *attr, const char *buf, size_t count)
{
	struct testdev *td = dev_get_drvdata(dev);
	unsigned int n, i;
	int ret;

	ret = kstrtouint(buf, 0, &n);
	if (ret)
		return ret;
	if (n < 1 || n > RAISE_MAX)
		return -EINVAL;
	mutex_lock(&td->busy);
	for (i = 0; i < n; i++) {
		testdev_arm(td);
		iowrite32(IRQ_TEST_BIT, td->bar0 + REG_IRQ_RAISE);
		td->raised++;
		if (!testdev_wait(td, IRQ_TEST_BIT)) {
			td->timeouts++;
			ret = -ETIMEDOUT;
			break;
		}
	}
	mutex_unlock(&td->busy);
	return ret ? ret : count;
}
static DEVICE_ATTR_WO(raise);

static ssize_t dma_store(struct device *dev, struct device_attribute *attr, const char *buf, size_t count)
{
	struct testdev *td = dev_get_drvdata(dev);
	dma_addr_t bus;
	unsigned int len, i;
	u8 *cpu;
	int ret;

	ret = kstrtouint(buf, 0, &len);
	if (ret)
		return ret;
	if (len < 1 || len > DMA_BUF_MAX)
		return -EINVAL;
	cpu = dma_alloc_coherent(&td->pdev->dev, 2 * DMA_BUF_MAX, &bus, GFP_KERNEL);
	if (!cpu)
		return -ENOMEM;
	for (i = 0; i < len; i++)
		cpu[i] = (u8)(i * 7 + 0x5a);
	memset(cpu + DMA_BUF_MAX, 0, len);
	mutex_lock(&td->busy);
	testdev_arm(td);
	lo_hi_writeq(bus, td->bar0 + REG_DMA_SRC);
	lo_hi_writeq(bus + DMA_BUF_MAX, td->bar0 + REG_DMA_DST);
	iowrite32(len, td->bar0 + REG_DMA_LEN);
	iowrite32(DMA_CMD_START, td->bar0 + REG_DMA_CMD);
	if (!testdev_wait(td, IRQ_DMA_DONE | IRQ_DMA_ERROR)) {
		td->timeouts++;
		ret = -ETIMEDOUT;
	} else if (ioread32(td->bar0 + REG_DMA_STATUS) != DMA_STATUS_DONE ||
		   memcmp(cpu, cpu + DMA_BUF_MAX, len)) {
		ret = -EIO;
	} else {
		td->dma_ok++;
	}
	mutex_unlock(&td->busy);
	dma_free_coherent(&td->pdev->dev, 2 * DMA_BUF_MAX, cpu, bus);
	return ret ? ret : count;
}
static DEVICE_ATTR_WO(dma);

static ssize_t counts_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct testdev *td = dev_get_drvdata(dev);
	unsigned int handled = 0;
	int len, i;

	for (i = 0; i < td->nvec; i++)
		handled += atomic_read(&td->vec[i].handled);
	mutex_lock(&td->busy);
	len = sysfs_emit(buf, "mode=%s vectors=%d raised=%u handled=%u unhandled=%d dma_irqs=%d dma_ok=%u timeouts=%u",
			 mode_names[chosen_mode], td->nvec, td->raised, handled, atomic_read(&td->unhandled),
			 atomic_read(&td->dma_irqs), td->dma_ok, td->timeouts);
	mutex_unlock(&td->busy);
	for (i = 0; i < td->nvec; i++)
		len += sysfs_emit_at(buf, len, " vec%d=%d irq%d=%d", i, atomic_read(&td->vec[i].handled), i,
				     td->vec[i].irq);
	len += sysfs_emit_at(buf, len, " msi_enabled=%d msix_enabled=%d\n", td->pdev->msi_enabled,
			     td->pdev->msix_enabled);
	return len;
}
static DEVICE_ATTR_RO(counts);

static struct attribute *testdev_attrs[] = {
	&dev_attr_raise.attr,
	&dev_attr_dma.attr,
	&dev_attr_counts.attr,
	NULL,
};

static const struct attribute_group testdev_group = {
	.name = "testdev",
	.attrs = testdev_attrs,
};

static const struct attribute_group *testdev_groups[] = {
	&testdev_group,
	NULL,
};

static void testdev_free_irqs(struct testdev *td, int count)
{
	while (count-- > 0)
		free_irq(td->vec[count].irq, &td->vec[count]);
}

static int testdev_setup_irqs(struct testdev *td)
{
	static const unsigned int flags[] = { PCI_IRQ_LEGACY, PCI_IRQ_MSI, PCI_IRQ_MSIX };
	int want = chosen_mode == MODE_MSIX ? MAX_VECTORS : 1;
	int i, ret;

	ret = pci_alloc_irq_vectors(td->pdev, want, want, flags[chosen_mode]);
	if (ret < 0)
		return ret;
	td->nvec = ret;
	for (i = 0; i < td->nvec; i++) {
		struct testdev_vector *v = &td->vec[i];

		v->td = td;
		v->irq = pci_irq_vector(td->pdev, i);
		snprintf(v->name, sizeof(v->name), "testdev-%s%d", mode_names[chosen_mode], i);
		ret = request_irq(v->irq, testdev_irq, chosen_mode == MODE_INTX ? IRQF_SHARED : 0, v->name, v);
		if (ret) {
			testdev_free_irqs(td, i);
			pci_free_irq_vectors(td->pdev);
			return ret;
		}
	}
	return 0;
}

static int testdev_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct testdev *td;
	u32 magic;
	int ret;

	td = devm_kzalloc(&pdev->dev, sizeof(*td), GFP_KERNEL);
	if (!td)
		return -ENOMEM;
	td->pdev = pdev;
	mutex_init(&td->busy);
	spin_lock_init(&td->seen_lock);
	init_completion(&td->event);

	ret = pci_enable_device(pdev);
	if (ret)
		return ret;
	ret = pci_request_region(pdev, 0, DRV_NAME);
	if (ret)
		goto err_disable;
	td->bar0 = pci_iomap(pdev, 0, 0);
	if (!td->bar0) {
		ret = -ENOMEM;
		goto err_release;
	}
	magic = ioread32(td->bar0 + REG_ID);
	if (magic != TESTDEV_MAGIC) {
		dev_err(&pdev->dev, "ID register reads %#x, want %#x\n", magic, TESTDEV_MAGIC);
		ret = -ENODEV;
		goto err_unmap;
	}
	ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64));
	if (ret)
		goto err_unmap;
	pci_set_master(pdev);
	iowrite32(0xffffffff, td->bar0 + REG_IRQ_ACK); /* start quiet */
	pci_set_drvdata(pdev, td);
	ret = testdev_setup_irqs(td);
	if (ret)
		goto err_master;
	dev_info(&pdev->dev, "mode %s, %d vector(s), first irq %d\n", mode_names[chosen_mode], td->nvec,
		 td->vec[0].irq);
	return 0;

err_master:
	pci_clear_master(pdev);
err_unmap:
	pci_iounmap(pdev, td->bar0);
err_release:
	pci_release_region(pdev, 0);
err_disable:
	pci_disable_device(pdev);
	return ret;
}

static void testdev_remove(struct pci_dev *pdev)
{
	struct testdev *td = pci_get_drvdata(pdev);

	iowrite32(0xffffffff, td->bar0 + REG_IRQ_ACK);
	testdev_free_irqs(td, td->nvec);
	pci_free_irq_vectors(pdev);
	pci_clear_master(pdev);
	pci_iounmap(pdev, td->bar0);
	pci_release_region(pdev, 0);
	pci_disable_device(pdev);
}

static const struct pci_device_id testdev_ids[] = {
	{ PCI_DEVICE(TESTDEV_VENDOR_ID, TESTDEV_DEVICE_ID) },
	{ 0 },
};
MODULE_DEVICE_TABLE(pci, testdev_ids);

static struct pci_driver testdev_driver = {
	.name = DRV_NAME,
	.id_table = testdev_ids,
	.probe = testdev_probe,
	.remove = testdev_remove,
	.dev_groups = testdev_groups, /* __pci_register_driver copies it to driver.dev_groups */
};

static int __init testdev_init(void)
{
	int m = sysfs_match_string(mode_names, mode);

	if (m < 0) {
		pr_err(DRV_NAME ": mode=%s: use intx, msi or msix\n", mode);
		return -EINVAL;
	}
	chosen_mode = m;
	return pci_register_driver(&testdev_driver);
}

static void __exit testdev_exit(void)
{
	pci_unregister_driver(&testdev_driver);
}

module_init(testdev_init);
module_exit(testdev_exit);

MODULE_DESCRIPTION("Driver for the devmodels PCI test device: counts INTx, MSI and MSI-X interrupts");
MODULE_AUTHOR("devmodels");
MODULE_LICENSE("GPL");
