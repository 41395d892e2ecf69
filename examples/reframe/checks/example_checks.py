"""Two small regression checks for examples/reframe: one passes, one fails when asked to.

`ProductCheck` fails when its variable `fail` is set (`reframe -S ProductCheck.fail=true`, which the
example's job template adds when the CI sets REFRAME_SHOW_FAILURE=1), so that a failure can be
shown in the CI's test report.
"""

import reframe as rfm
import reframe.utility.sanity as sn


@rfm.simple_test
class HostnameCheck(rfm.RunOnlyRegressionTest):
    """The job step runs on a node of the allocation and prints its name."""

    descr = 'a job step runs and prints its node name'
    valid_systems = ['*']
    valid_prog_environs = ['*']
    executable = 'hostname'
    tags = {'example'}

    @sanity_function
    def printed_a_name(self):
        return sn.assert_found(r'^\S+$', self.stdout, msg='no node name in the output')


@rfm.simple_test
class ProductCheck(rfm.RunOnlyRegressionTest):
    """The job step computes 6 * 7; the check compares it with what it expects."""

    descr = 'a job step computes 6 * 7'
    valid_systems = ['*']
    valid_prog_environs = ['*']
    executable = 'expr'
    executable_opts = ['6', r'\*', '7']
    tags = {'example'}
    fail = variable(bool, value=False)  # true: expect a wrong product, to show a failure

    @sanity_function
    def product_is_right(self):
        expected = 43 if self.fail else 42
        product = sn.extractsingle(r'^(\d+)$', self.stdout, 1, int)
        return sn.assert_eq(product, expected, msg='6 * 7 printed {0}, expected {1}')
