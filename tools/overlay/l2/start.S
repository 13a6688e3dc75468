/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Reset vector of the L2 firmware: the CPU starts in real mode at
 * 0xfffffff0 with CS base 0xffff0000; switch to 32-bit flat protected mode
 * (no paging), set a stack in low RAM and call fw_main().
 */
#define STACK_TOP	0x00080000

	.section .text16, "ax"
	.code16
	.globl entry16
entry16:
	cli
	cld
	/* Through CS (base 0xffff0000); fw.lds puts entry16 there. */
	lgdtl	%cs:(gdt_ptr - entry16)
	movl	%cr0, %eax
	orl	$1, %eax
	movl	%eax, %cr0
	ljmpl	$0x08, $entry32

	.code32
entry32:
	movw	$0x10, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	movl	$STACK_TOP, %esp
	call	fw_main
1:	hlt
	jmp	1b

	.balign	8
gdt:
	.quad	0
	.quad	0x00cf9a000000ffff	/* 0x08: code, flat 4 GiB */
	.quad	0x00cf92000000ffff	/* 0x10: data, flat 4 GiB */
gdt_ptr:
	.word	gdt_ptr - gdt - 1
	.long	gdt

	.section .reset, "ax"
	.code16
	.globl reset_vector
reset_vector:
	jmp	entry16
	.balign	16, 0xf4

	.section .note.GNU-stack, "", @progbits
