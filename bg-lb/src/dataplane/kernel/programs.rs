//! The object's programs besides `bg_lb`: the SYN proxy's jobs, which
//! `bg_lb` tail-calls, and the flow-reset programs (bg-lb-ebpf's
//! `flow_reset`, one per family), run on trigger frames through `BPF_PROG_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES`, which carries the program's verdict out as
//! if the frame had arrived on the interface: the RST it wrote leaves by
//! XDP_TX or redirect, as the data plane's own packets do.

use aya::{
    maps::ProgramArray,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
};
use bg_lb_common::{
    maps::{self, FLOW_RESET_PROGRAM, FLOW_RESET6_PROGRAM},
    syn_proxy::JOB_PROGRAMS,
};

use super::{Kernel, load_verified, map_err};
use crate::dataplane::{DataplaneError, wire::Wire};

impl Kernel {
    /// Loads the SYN proxy's job programs and puts each in SYN_PROXY_JOBS at
    /// its index, where the load balancer tail-calls it. An adopted (pinned)
    /// array gets this object's programs, as the link gets its bg_lb.
    pub(super) fn load_syn_proxy_jobs(&mut self) -> Result<(), DataplaneError> {
        let mut fds = Vec::with_capacity(JOB_PROGRAMS.len());
        for name in JOB_PROGRAMS {
            let prog = self.program_mut(name)?;
            load_verified(prog).map_err(|cause| DataplaneError::Program { name, cause })?;
            let fd = prog.fd().map_err(|cause| DataplaneError::Program { name, cause })?;
            fds.push(fd.try_clone().map_err(DataplaneError::ProgramFd)?);
        }
        let mut jobs: ProgramArray<_> = self.map_mut(maps::SYN_PROXY_JOBS)?;
        for (index, fd) in fds.iter().enumerate() {
            jobs.set(index as u32, fd, 0).map_err(map_err(maps::SYN_PROXY_JOBS))?;
        }
        Ok(())
    }

    /// Loads both families' flow-reset programs.
    pub(super) fn load_flow_reset(&mut self) -> Result<(), DataplaneError> {
        for name in [FLOW_RESET_PROGRAM, FLOW_RESET6_PROGRAM] {
            load_verified(self.program_mut(name)?).map_err(|cause| DataplaneError::Program { name, cause })?;
        }
        Ok(())
    }

    /// Runs family `A`'s flow-reset program on `frame` as if it arrived on
    /// `ifindex`.
    pub(in crate::dataplane) fn run_flow_reset<A: Wire>(
        &self,
        frame: &[u8],
        ifindex: u32,
    ) -> Result<(), DataplaneError> {
        let name = A::FLOW_RESET;
        let program_error = |cause| DataplaneError::Program { name, cause };
        let prog: &Xdp = self
            .ebpf
            .program(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(program_error)?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex; live frames want data_end = the
        // frame's length and no metadata.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: 1,
            attrs: TestRunAttrs::new().xdp_live_frames(1),
            ..TestRunOptions::new()
        })
        .map(|_| ())
        .map_err(program_error)
    }

    fn program_mut(&mut self, name: &'static str) -> Result<&mut Xdp, DataplaneError> {
        self.ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(|cause| DataplaneError::Program { name, cause })
    }
}
