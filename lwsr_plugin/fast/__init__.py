"""Inference forms: the fast form of every plugin arch (the trained module's arithmetic rearranged for memory traffic
and fused kernels, with the module's fp32 output: max abs diff <= 1e-5 on [0, 1] images), and the ways a forward is
run (tiling and self-ensemble in ``tiling``, CUDA graph replay in ``graphs``). No training code.

``fast_inference_net(net)`` returns the form for ``net``'s arch (or ``net`` itself for an arch without one). The
shared mechanisms (fused convolutions, scratch buffers, pixel-shuffle convolutions) are in
:mod:`lwsr_plugin.fast.kernels`; each form's docstring says what it rearranges and why.
"""
from .drn import FastDRN
from .idn import FastIDN
from .imdn import FastIMDN, FastIMDN_RTC
from .kernels import FastConv, FastForm
from .slwsr import FastSLWSR

FORMS = (FastIMDN, FastIMDN_RTC, FastIDN, FastDRN, FastSLWSR)


def fast_form_class(net):
    """The fast form class that takes ``net``, or None."""
    for form in FORMS:
        if isinstance(net, form.arch):
            return form
    return None


def fast_inference_net(net):
    """The fast inference form of ``net`` (eval mode), or ``net`` unchanged for an arch without one or a net that is
    already a fast form."""
    if isinstance(net, FastForm):
        return net
    form = fast_form_class(net)
    return net if form is None else form(net)


__all__ = ['FORMS', 'FastConv', 'FastDRN', 'FastForm', 'FastIDN', 'FastIMDN', 'FastIMDN_RTC', 'FastSLWSR',
           'fast_form_class', 'fast_inference_net']
