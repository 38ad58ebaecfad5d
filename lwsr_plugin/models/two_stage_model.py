"""Two-stage training schedule: IDN's "train with MAE, then fine-tune with MSE on larger patches at a tenth of the
learning rate" (Hui et al., CVPR 2018, §3.1.1 and §4.2, Table 1), for any arch, in one BasicSR run.

Option keys (under ``train``; ``pixel_opt``, ``optim_g`` and ``scheduler`` describe stage 1 as in any SRModel YAML)::

    two_stage:
      switch_iter: 500000        # iterations 1..switch_iter are stage 1, the rest stage 2 (< total_iter)
      stage1_gt_size: 58         # HR patch side of stage 1 (a multiple of scale)
      gt_size: 78                # HR patch side of stage 2; default: datasets.train.gt_size
      pixel_opt: {type: MSELoss, loss_weight: 1.0, reduction: mean}   # stage-2 pixel loss
      lr_factor: 0.1             # every learning rate (and the scheduler's base) times this at the switch
      reset_optimizer: false     # true: drop Adam's moments at the switch

How the patch size changes: BasicSR builds the train dataloader (and its worker processes, which hold a copy of the
dataset) before the model, and nothing tells the workers the iteration. So the loader always produces the largest
patches (``datasets.train.gt_size`` >= both stage sizes), and during stage 1 this model crops a random
``stage1_gt_size`` window from every sample of the fed batch (LR and HR aligned). This needs no custom dataset,
works with any number of workers, any dataset type and any arch; the cost is loading bigger patches than needed in
stage 1. The random window inside a random crop is still a uniformly placed patch away from image borders.

Resume: the optimizer and scheduler states saved by BasicSR already carry the scaled learning rate, so a run resumed
from a state saved after the switch only re-selects the stage-2 loss and patch size (no second scaling); one saved at
or before ``switch_iter`` continues in stage 1 and switches on time.
"""
import torch

from basicsr.data.transforms import paired_random_crop
from basicsr.losses import build_loss
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import MODEL_REGISTRY
from lwsr_plugin.models.lwsr_model import LWSRModel
from lwsr_plugin.options import keys

TWO_STAGE_KEYS = tuple(k.name for k in keys.under('train.two_stage'))


def _smallest_training_image(dataset_opt):
    """``(side, name)`` of the smallest HR training image, from LMDB ``meta_info.txt`` or image headers; None if the
    dataset is of a kind this cannot inspect."""
    import os
    root = dataset_opt.get('dataroot_gt')
    if not root or not os.path.exists(root):
        return None
    sizes = []
    if dataset_opt.get('io_backend', {}).get('type') == 'lmdb' or root.endswith('.lmdb'):
        from lwsr_plugin.data.images import DataPrepError
        from lwsr_plugin.data.lmdb_io import read_meta_info
        try:
            meta = read_meta_info(root)
        except DataPrepError:
            return None
        sizes = [(min(shape[:2]), key) for key, (shape, _) in meta.items()]
    elif os.path.isdir(root):
        from PIL import Image
        for name in sorted(os.listdir(root)):
            try:
                with Image.open(os.path.join(root, name)) as img:  # reads the header only
                    sizes.append((min(img.size), name))
            except (OSError, ValueError):
                continue
    return min(sizes) if sizes else None


@MODEL_REGISTRY.register()
class TwoStageSRModel(LWSRModel):
    """LWSRModel (fast training options included) whose pixel loss, learning rate and training patch size change
    once, at ``train.two_stage.switch_iter``.

    Stage 1 is the ordinary SRModel setup; stage 2 follows ``train.two_stage`` (see the module docstring). The log and
    tensorboard get a message at the switch, and every printed log line carries ``stage`` and ``gt_size`` (the HR
    patch side of the batch just trained on).
    """

    def init_training_settings(self):
        train_opt = self.opt['train']
        if 'two_stage' not in train_opt:
            raise ValueError('TwoStageSRModel needs train.two_stage (switch_iter, stage1_gt_size, pixel_opt, ...); '
                             'use model_type: SRModel for a single-stage run.')
        self._parse_two_stage(dict(train_opt['two_stage']))
        super().init_training_settings()  # stage 1: pixel_opt, optim_g, scheduler as usual (they pop their 'type')
        self.cri_pix_stage1 = self.cri_pix
        # built now so a bad stage-2 loss fails before training; build_loss deep-copies its option dict
        self.cri_pix_stage2 = build_loss(self.two_stage['pixel_opt']).to(self.device)
        self.stage = 1

    def _parse_two_stage(self, ts):
        total_iter = int(self.opt['train'].get('total_iter', 0))
        scale = int(self.opt.get('scale', 1))
        loader_opt = self.opt.get('datasets', {}).get('train', {})
        loader_gt = loader_opt.get('gt_size')
        unknown = set(ts) - set(TWO_STAGE_KEYS)
        if unknown:
            raise ValueError(f'train.two_stage: unknown keys {sorted(unknown)}.')
        if 'switch_iter' not in ts or 'pixel_opt' not in ts:
            raise ValueError('train.two_stage needs switch_iter and pixel_opt (the stage-2 loss).')
        switch = int(ts['switch_iter'])
        if not 1 <= switch < total_iter:
            raise ValueError(f'train.two_stage.switch_iter ({switch}) must be >= 1 and below train.total_iter '
                             f'({total_iter}), otherwise stage 2 never runs.')
        if loader_gt is None:
            raise ValueError('TwoStageSRModel: datasets.train.gt_size must be set (the stage-2 patch side).')
        stage2_gt = int(ts.get('gt_size', loader_gt))
        stage1_gt = int(ts.get('stage1_gt_size', stage2_gt))
        for key, size in (('stage1_gt_size', stage1_gt), ('gt_size', stage2_gt)):
            if size % scale or size < scale:
                raise ValueError(f'train.two_stage.{key} ({size}) must be a positive multiple of scale ({scale}).')
            if size > loader_gt:
                raise ValueError(f'train.two_stage.{key} ({size}) is larger than datasets.train.gt_size ({loader_gt}): '
                                 'the loader must produce the largest patch; set datasets.train.gt_size to it.')
        smallest = _smallest_training_image(loader_opt)
        if smallest is not None and smallest[0] < loader_gt:
            raise ValueError(f'datasets.train.gt_size ({loader_gt}, the stage-2 patch) is larger than the smallest '
                             f'training image {smallest[1]!r} ({smallest[0]} px), which BasicSR cannot crop. Leave '
                             'such images out of the training set (as Caffe\'s offline patch extraction did) or use '
                             'smaller patches.')
        lr_factor = float(ts.get('lr_factor', keys.default('train.two_stage.lr_factor')))
        if not lr_factor > 0:
            raise ValueError(f'train.two_stage.lr_factor must be > 0, got {lr_factor}.')
        self.two_stage = dict(switch_iter=switch, stage1_gt_size=stage1_gt, gt_size=stage2_gt,
                              pixel_opt=dict(ts['pixel_opt']), lr_factor=lr_factor,
                              reset_optimizer=bool(ts.get('reset_optimizer',
                                                          keys.default('train.two_stage.reset_optimizer'))))

    # ------------------------------------------------------------------------------------------------- training
    def _crop_batch(self, gt_size):
        """Random ``gt_size`` HR window (and the aligned LR window) per sample of the fed batch."""
        scale = int(self.opt['scale'])
        lq_size = gt_size // scale
        h, w = self.lq.shape[-2:]
        if lq_size >= h and lq_size >= w:
            return
        # per sample, so every sample gets its own window (BasicSR's function crops a whole list alike)
        crops = [paired_random_crop(self.gt[i:i + 1], self.lq[i:i + 1], gt_size, scale)
                 for i in range(self.lq.shape[0])]
        self.gt, self.lq = torch.cat([g for g, _ in crops]), torch.cat([lq for _, lq in crops])

    def optimize_parameters(self, current_iter):
        if self.stage == 1 and current_iter > self.two_stage['switch_iter']:
            self.enter_stage2(current_iter)
        self._crop_batch(self.two_stage['stage1_gt_size'] if self.stage == 1 else self.two_stage['gt_size'])
        super().optimize_parameters(current_iter)
        self.log_dict['stage'] = float(self.stage)
        self.log_dict['gt_size'] = float(self.gt.shape[-1])

    def enter_stage2(self, current_iter, scale_lr=True):
        """Switch loss, patch size and (unless resuming, where the saved states already hold it) learning rate."""
        ts = self.two_stage
        old_loss = type(self.cri_pix).__name__
        self.cri_pix = self.cri_pix_stage2
        self.stage = 2
        if scale_lr:
            for optimizer in self.optimizers:
                for group in optimizer.param_groups:
                    group['lr'] *= ts['lr_factor']
                    # schedulers restart/warm up from 'initial_lr' (MultiStepRestartLR, warmup) or base_lrs (cosine)
                    if 'initial_lr' in group:
                        group['initial_lr'] *= ts['lr_factor']
                if ts['reset_optimizer']:
                    optimizer.state.clear()
            for scheduler in self.schedulers:
                scheduler.base_lrs = [lr * ts['lr_factor'] for lr in scheduler.base_lrs]
            action = 'switching to'
        else:
            action = 'resumed in'
        msg = (f'Two-stage schedule: {action} stage 2 at iter {current_iter}: pixel loss {old_loss} -> '
               f'{type(self.cri_pix).__name__}, gt_size {ts["stage1_gt_size"]} -> {ts["gt_size"]}, ' +
               (f'lr x{ts["lr_factor"]} -> {self.get_current_learning_rate()}, optimizer state '
                f'{"reset" if ts["reset_optimizer"] else "kept"}.' if scale_lr else 'lr from the saved state '
                f'{self.get_current_learning_rate()}.'))
        get_root_logger().info(msg)
        self._tb_note(msg, current_iter)

    @master_only
    def _tb_note(self, msg, current_iter):
        """Write the switch message as tensorboard text into the run's tb_logger folder (where BasicSR's own
        SummaryWriter writes; tensorboard merges event files of one folder)."""
        import os
        logger_opt = self.opt.get('logger', {})
        if not logger_opt.get('use_tb_logger') or 'debug' in self.opt['name']:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        log_dir = os.path.join(self.opt.get('root_path', '.'), 'tb_logger', self.opt['name'])
        with SummaryWriter(log_dir=log_dir) as writer:
            writer.add_text('two_stage', msg, current_iter)
            writer.add_scalar('two_stage/stage', 2, current_iter)

    def resume_training(self, resume_state):
        super().resume_training(resume_state)  # optimizers, schedulers, GradScaler
        if resume_state['iter'] > self.two_stage['switch_iter']:
            self.enter_stage2(resume_state['iter'], scale_lr=False)
